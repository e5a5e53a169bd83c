"""Identity and roles through the real review-api and audit processes: OIDC JWTs signed by keys made
in the test and served from a local JWKS endpoint, API tokens, roles and scopes, self-approval, the
decision rate limit — each answered with the right status and problem body."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from changegate.cli.embedded import free_port
from changegate.cli.main import app as cli
from changegate.core.auth import Role
from changegate.core.auth.tokens import create_token
from changegate.core.contracts import Proposal, ReviewRequest
from changegate.core.settings import CommonSettings
from changegate.review_api import queue
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from helpers import ServiceProcess, service_process
from hostile import good_payload
from typer.testing import CliRunner

AUDIENCE = "changegate-review"
REASON = {"reason": "not this one"}


class Issuer:
    """A local OIDC issuer: discovery document and JWKS over HTTP, keys made here."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.published: list[dict[str, Any]] = []
        # Authorization codes given out: code -> (PKCE challenge, redirect URI, the user's claims).
        self.codes: dict[str, tuple[str, str, dict[str, Any]]] = {}
        self.user: dict[str, Any] = {"email": "olivia@example.com", "groups": ["reviewer"]}
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path == "/.well-known/openid-configuration":
                    body: dict[str, Any] = {
                        "issuer": issuer.url,
                        "jwks_uri": f"{issuer.url}/jwks",
                        "authorization_endpoint": f"{issuer.url}/authorize",
                        "token_endpoint": f"{issuer.url}/token",
                    }
                elif path == "/jwks":
                    body = {"keys": issuer.published}
                elif path == "/authorize":  # the user signs in and consents: back with a code
                    params = dict(urllib.parse.parse_qsl(query))
                    code = uuid.uuid4().hex
                    issuer.codes[code] = (params["code_challenge"], params["redirect_uri"], dict(issuer.user))
                    back = urllib.parse.urlencode({"code": code, "state": params["state"]})
                    self.send_response(302)
                    self.send_header("Location", f"{params['redirect_uri']}?{back}")
                    self.end_headers()
                    return
                else:
                    self.send_error(404)
                    return
                self._json(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                challenge, redirect, claims = issuer.codes.pop(form.get("code", ""), ("", "", {}))
                verifier = form.get("code_verifier", "").encode()
                expected = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
                if (
                    self.path != "/token"
                    or not challenge
                    or expected != challenge
                    or redirect != form.get("redirect_uri")
                ):
                    self.send_error(400)
                    return
                self._json({"access_token": issuer.token(**claims), "token_type": "Bearer"})

            def _json(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_key(self, kid: str, publish: bool = True) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys[kid] = key
        if publish:
            self.publish(kid)

    def publish(self, kid: str) -> None:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.keys[kid].public_key()))
        self.published.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})

    def token(self, kid: str = "k1", algorithm: str = "RS256", **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "u-1",
            "email": "olivia@example.com",
            "groups": ["reviewer"],
            "iat": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.keys[kid], algorithm=algorithm, headers={"kid": kid})


def _hs256_with_public_key(issuer: Issuer, now: int) -> str:
    """The classic confusion attack: an HMAC token keyed with the issuer's public key."""
    public_pem = issuer.keys["k1"].public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    claims = {"iss": issuer.url, "aud": AUDIENCE, "email": "x@example.com", "exp": now + 300}
    payload = b64(json.dumps(claims).encode())
    signature = b64(hmac.new(public_pem, header + b"." + payload, hashlib.sha256).digest())
    return (header + b"." + payload + b"." + signature).decode()


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    issuer = Issuer()
    issuer.add_key("k1")
    yield issuer
    issuer.server.shutdown()


@pytest.fixture
def review_api(
    settings: CommonSettings, topics: None, issuer: Issuer, tmp_path: Path
) -> Iterator[ServiceProcess]:
    env = {
        "CHANGEGATE_AUTH_OIDC_ISSUER": issuer.url,
        "CHANGEGATE_AUTH_OIDC_AUDIENCE": AUDIENCE,
        "CHANGEGATE_AUTH_OIDC_JWKS_MIN_REFETCH_SECONDS": "0",
        "CHANGEGATE_AUTH_OIDC_ROLE_MAP": json.dumps(
            {
                "data-team": {"role": "reviewer", "kinds": ["merge"]},
                "dedup-desk": {"role": "reviewer", "queues": ["dedup"]},
            }
        ),
        "CHANGEGATE_REVIEW_DECISION_RATE_LIMIT": "5/minute",
        # Revocation at once (the default cache's delay is tested in test_token_cache).
        "CHANGEGATE_AUTH_TOKEN_CACHE_SECONDS": "0",
    }
    with service_process("changegate.review_api", settings, free_port(), tmp_path / "svc.log", **env) as svc:
        yield svc


async def _pending(pool: asyncpg.Pool, requested_by: str | None = None, queue_name: str = "default") -> str:
    request = good_payload("review_request")
    assert isinstance(request, ReviewRequest)
    proposal: Proposal = request.proposal.model_copy(update={"requested_by": requested_by})
    await queue.enqueue(pool, request.model_copy(update={"proposal": proposal, "queue": queue_name}))
    return str(proposal.proposal_id)


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


async def test_jwts_are_verified_against_the_issuers_keys(
    review_api: ServiceProcess, issuer: Issuer, pool: asyncpg.Pool
) -> None:
    async def status_of(token: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=review_api.url) as client:
            return await client.get("/v1/proposals", headers={"Authorization": f"Bearer {token}"})

    assert (await status_of(issuer.token())).status_code == 200
    now = int(time.time())
    refused = {
        "expired": issuer.token(exp=now - 120),  # beyond the 30 s leeway
        "not yet valid": issuer.token(nbf=now + 600),
        "wrong issuer": issuer.token(iss="https://evil.example"),
        "wrong audience": issuer.token(aud="someone-else"),
        "no expiry": issuer.token(exp=None),
        "no identity": issuer.token(email=None),
        "HS256 with the public key as secret": _hs256_with_public_key(issuer, now),
        "alg none": jwt.encode(
            {"iss": issuer.url, "aud": AUDIENCE, "email": "x@example.com", "exp": now + 300},
            None,  # type: ignore[arg-type]
            algorithm="none",
            headers={"kid": "k1"},
        ),
        "tampered": issuer.token()[:-4] + "AAAA",
        "garbage": "not.a.jwt",
    }
    issuer.add_key("k-unpublished", publish=False)
    refused["unknown key id"] = issuer.token(kid="k-unpublished")
    bodies = []
    for what, token in refused.items():
        response = await status_of(token)
        body = _problem(response, 401)
        assert response.headers["www-authenticate"] == 'Bearer realm="changegate", error="invalid_token"', (
            what
        )
        bodies.append(body)
    # Whatever was wrong, the answer is the same: it never says why, nor whether a token exists.
    assert all(b == bodies[0] for b in bodies), bodies

    ec_key = ec.generate_private_key(ec.SECP256R1())
    es = jwt.encode(
        {"iss": issuer.url, "aud": AUDIENCE, "exp": now + 300},
        ec_key,
        algorithm="ES256",
        headers={"kid": "k1"},
    )
    _problem(await status_of(es), 401)  # k1 is an RSA key for RS256: ES256 under its id is refused

    # Key rotation: a new key, published after the first refusal, is fetched and accepted.
    issuer.publish("k-unpublished")
    assert (await status_of(issuer.token(kid="k-unpublished"))).status_code == 200
    missing = await asyncio.to_thread(lambda: httpx.get(f"{review_api.url}/v1/proposals"))
    _problem(missing, 401)
    assert missing.headers["www-authenticate"] == 'Bearer realm="changegate"'


async def test_roles_scopes_and_self_approval(
    review_api: ServiceProcess, issuer: Issuer, pool: asyncpg.Pool
) -> None:
    def auth(**claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {issuer.token(**claims)}"}

    viewer = auth(email="vera@example.com", groups=["viewer"])
    nobody = auth(email="nina@example.com", groups=["marketing"])
    dedup_desk = auth(email="dana@example.com", groups=["dedup-desk"])
    data_team = auth(email="dave@example.com", groups=["data-team"])
    alice = auth(email="alice@example.com", groups=["reviewer"])
    bob = auth(email="bob@example.com", groups=["reviewer"])
    async with httpx.AsyncClient(base_url=review_api.url) as client:
        item = await _pending(pool)
        assert (await client.get("/v1/proposals", headers=viewer)).status_code == 200
        _problem(await client.get("/v1/proposals", headers=nobody), 403)
        body = _problem(await client.post(f"/v1/proposals/{item}/approve", headers=viewer), 403)
        assert body["detail"] == "this needs the reviewer role"
        # Scoped reviewers: the dedup desk decides the dedup queue only, the data team merges only.
        # An item outside their scopes is not theirs to read either: it does not exist for them.
        body = _problem(await client.post(f"/v1/proposals/{item}/approve", headers=dedup_desk), 404)
        _problem(await client.post(f"/v1/proposals/{item}/approve", headers=data_team), 404)
        # A viewer of every queue with a reviewer grant for merges only reads it, cannot decide it.
        mixed = auth(email="max@example.com", groups=["viewer", "data-team"])
        body = _problem(await client.post(f"/v1/proposals/{item}/approve", headers=mixed), 403)
        assert body["detail"] == "your role does not cover field_update proposals in queue default"
        dedup_item = await _pending(pool, queue_name="dedup")
        # Scopes limit reading too: the dedup desk lists, reads and counts the dedup queue only.
        listed = (await client.get("/v1/proposals", headers=dedup_desk)).json()["items"]
        assert [i["proposal_id"] for i in listed] == [dedup_item]
        assert (await client.get("/v1/proposals", headers=data_team)).json()["items"] == []
        _problem(await client.get(f"/v1/proposals/{item}", headers=dedup_desk), 404)
        assert (await client.get(f"/v1/proposals/{dedup_item}", headers=dedup_desk)).status_code == 200
        counted = (await client.get("/v1/stats", headers=dedup_desk)).json()
        assert [(q["queue"], q["depth"]) for q in counted["queues"]] == [("dedup", 1)]
        everything = (await client.get("/v1/stats", headers=viewer)).json()
        assert everything["total"] == 2
        assert (
            await client.post(f"/v1/proposals/{dedup_item}/reject", headers=dedup_desk, json=REASON)
        ).status_code == 200

        # Alice caused this proposal: she may withdraw it (reject), never approve it; Bob may. Her
        # identity in any spelling is hers.
        own = await _pending(pool, requested_by="alice@example.com")
        body = _problem(await client.post(f"/v1/proposals/{own}/approve", headers=alice), 403)
        assert body["detail"] == "you requested this change: another reviewer must approve it"
        shouting = auth(email="Alice@Example.COM", groups=["reviewer"])
        _problem(await client.post(f"/v1/proposals/{own}/approve", headers=shouting), 403)
        spelled = await _pending(pool, requested_by=" ALICE@example.com")
        _problem(await client.post(f"/v1/proposals/{spelled}/approve", headers=alice), 403)
        modify = {"changes": {"jobtitle": "CTO"}}
        _problem(
            await client.post(f"/v1/proposals/{own}/approve-with-changes", headers=alice, json=modify), 403
        )
        # Identities compare without case: the same person in capitals is still the requester.
        shouting = auth(email="ALICE@Example.COM ", groups=["reviewer"])
        body = _problem(await client.post(f"/v1/proposals/{own}/approve", headers=shouting), 403)
        assert body["reason"] == "own"
        approved = await client.post(f"/v1/proposals/{own}/approve", headers=bob)
        assert approved.json()["item"]["decided_by"] == "bob@example.com"
        assert await pool.fetchval(
            "SELECT decided_by FROM review_queue WHERE proposal_id = $1", uuid.UUID(own)
        ) == ("bob@example.com")


async def test_decisions_are_rate_limited_per_identity(
    review_api: ServiceProcess, issuer: Issuer, pool: asyncpg.Pool
) -> None:
    alice = {"Authorization": f"Bearer {issuer.token(email='alice@example.com')}"}
    bob = {"Authorization": f"Bearer {issuer.token(email='bob@example.com')}"}
    async with httpx.AsyncClient(base_url=review_api.url) as client:
        for _ in range(5):  # the limit is 5 a minute in this process
            assert (
                await client.post(f"/v1/proposals/{uuid.uuid4()}/reject", headers=alice, json=REASON)
            ).status_code == 404
        limited = await client.post(
            f"/v1/proposals/{await _pending(pool)}/reject", headers=alice, json=REASON
        )
        body = _problem(limited, 429)
        assert 1 <= int(limited.headers["retry-after"]) <= 61
        assert "decisions" in body["detail"]
        assert (
            await client.post(f"/v1/proposals/{uuid.uuid4()}/reject", headers=bob, json=REASON)
        ).status_code == 404


def _cli(settings: CommonSettings, *args: str) -> Any:
    env = {"CHANGEGATE_DATABASE_URL": settings.database_url, "COLUMNS": "250"}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


async def test_api_tokens_are_created_used_expired_and_revoked(
    settings: CommonSettings, review_api: ServiceProcess, pool: asyncpg.Pool
) -> None:
    created = await asyncio.to_thread(
        _cli, settings, "tokens", "create", "--name", "ops-bot", "--role", "reviewer", "--expires", "12h"
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("cg_")
    stored = await pool.fetchrow("SELECT * FROM changegate_api_tokens WHERE name = 'ops-bot'")
    assert stored is not None
    secret = token.split("_", 2)[2]  # the secret's own alphabet holds "_"
    assert len(secret) == 43
    assert secret.encode() not in bytes(stored["secret_hash"])  # only a hash is kept
    assert stored["last_used_at"] is None

    async with httpx.AsyncClient(base_url=review_api.url) as client:
        headers = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/v1/proposals", headers=headers)).status_code == 200
        item = await _pending(pool)
        decided = await client.post(f"/v1/proposals/{item}/reject", headers=headers, json=REASON)
        assert decided.json()["item"]["decided_by"] == "ops-bot"
        assert await pool.fetchval("SELECT last_used_at FROM changegate_api_tokens WHERE name = 'ops-bot'")

        listed = await asyncio.to_thread(_cli, settings, "tokens", "list")
        assert "ops-bot" in listed.output
        assert token not in listed.output

        wrong_secret = token[:-5] + ("AAAAA" if not token.endswith("AAAAA") else "BBBBB")
        invalid = _problem(
            await client.get("/v1/proposals", headers={"Authorization": f"Bearer {wrong_secret}"}), 401
        )

        revoked = await asyncio.to_thread(_cli, settings, "tokens", "revoke", stored["id"])
        assert revoked.exit_code == 0, revoked.output
        assert _problem(await client.get("/v1/proposals", headers=headers), 401) == invalid

        _, short = await create_token(
            pool, "temp", Role.VIEWER, created_by="test", expires_in=timedelta(seconds=1)
        )
        temp = {"Authorization": f"Bearer {short}"}
        assert (await client.get("/v1/proposals", headers=temp)).status_code == 200
        await asyncio.sleep(1.5)
        assert _problem(await client.get("/v1/proposals", headers=temp), 401) == invalid


async def test_the_audit_api_refuses_anonymous_reads(
    settings: CommonSettings, topics: None, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    with service_process("changegate.audit", settings, free_port(), tmp_path / "audit.log") as svc:
        _, token = await create_token(pool, "auditor@example.com", Role.VIEWER, created_by="test")
        async with httpx.AsyncClient(base_url=svc.url) as client:
            for path in ("/audit/entries", "/audit/verify"):
                response = await client.get(path)
                _problem(response, 401)
                assert response.headers["www-authenticate"] == 'Bearer realm="changegate"'
                assert (
                    await client.get(path, headers={"Authorization": f"Bearer {token}"})
                ).status_code == 200


def test_a_service_without_authentication_refuses_to_start(
    settings: CommonSettings, topics: None, tmp_path: Path
) -> None:
    with (
        pytest.raises(AssertionError, match="no authentication configured") as info,
        service_process(
            "changegate.audit",
            settings,
            free_port(),
            tmp_path / "audit.log",
            CHANGEGATE_AUTH_API_TOKENS="false",
        ),
    ):
        pass
    assert "CHANGEGATE_AUTH_OIDC_ISSUER" in str(info.value)


async def test_the_inbox_signs_in_with_oidc_authorization_code_and_pkce(
    settings: CommonSettings, topics: None, issuer: Issuer, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "CHANGEGATE_AUTH_OIDC_ISSUER": issuer.url,
        "CHANGEGATE_AUTH_OIDC_AUDIENCE": AUDIENCE,
        "CHANGEGATE_REVIEW_OIDC_CLIENT_ID": "changegate-inbox",
        "CHANGEGATE_REVIEW_PUBLIC_URL": url,
    }
    with service_process("changegate.review_api", settings, port, tmp_path / "svc.log", **env):
        async with httpx.AsyncClient(base_url=url) as browser:
            start = await browser.get("/inbox/login/oidc")
            assert start.status_code == 303
            authorize = urllib.parse.urlparse(start.headers["location"])
            params = dict(urllib.parse.parse_qsl(authorize.query))
            assert (params["client_id"], params["code_challenge_method"]) == ("changegate-inbox", "S256")
            assert params["redirect_uri"] == f"{url}/inbox/oidc/callback"
            # The provider sends the browser back with a code; a code for another state is refused.
            back = await browser.get(start.headers["location"])
            callback = back.headers["location"]
            forged = callback.replace(f"state={params['state']}", "state=someone-elses")
            assert (await browser.get(forged)).status_code == 403
            signed_in = await browser.get(callback)
            assert (signed_in.status_code, signed_in.headers["location"]) == (303, "/inbox")
            cookie = signed_in.headers["set-cookie"]
            assert "changegate_session=" in cookie
            assert "httponly" in cookie.lower()
            assert "samesite=strict" in cookie.lower()
            page = await browser.get("/inbox")
            assert page.status_code == 200
            assert "Signed in as <strong>olivia@example.com</strong>" in page.text
            assert "default-src 'none'" in page.headers["content-security-policy"]
            # A user whose groups grant nothing here is not signed in.
            issuer.user = {"email": "mallory@example.com", "groups": ["marketing"]}
            async with httpx.AsyncClient(base_url=url) as other:
                start = await other.get("/inbox/login/oidc")
                back = await other.get(start.headers["location"])
                refused = await other.get(back.headers["location"])
                assert refused.status_code == 403
