"""Schemathesis against each HTTP API's own OpenAPI document, served by the real service process on
a scratch database and topic prefix (never one a person uses): every phase (examples, boundary
coverage, fuzzing, stateful) and every check — no 5xx, no response that contradicts the document."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
from changegate.cli.embedded import free_port
from changegate.core.auth import Role
from changegate.core.auth.tokens import create_token
from changegate.core.contracts import ReviewRequest
from changegate.core.settings import CommonSettings
from changegate.review_api import queue
from helpers import service_process
from hostile import good_payload

TESTS_DIR = str(Path(__file__).resolve().parents[1])  # where the schemathesis hooks modules are


def schemathesis(
    url: str, report: Path, *options: str, config: str = "", env: dict[str, str] | None = None
) -> None:
    """Run the schemathesis CLI against a served OpenAPI document; fail with its report."""
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert cli, "schemathesis is in requirements.lock"
    config_file = report.with_suffix(".toml")
    config_file.write_text(config)
    result = subprocess.run(
        [
            cli,
            "--config-file",
            str(config_file),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "30",
            "--seed",
            "20261125",
            "--generation-database",
            "none",
            "--workers",
            "1",
            "--no-color",
            "--request-timeout",
            "10",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, **(env or {})},
    )
    report.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-3000:]


async def test_review_api_answers_every_input_as_documented(
    settings: CommonSettings, topics: None, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    unlimited = {"CHANGEGATE_REVIEW_DECISION_RATE_LIMIT": "1000000/minute"}  # the fuzzer is no abuser
    with service_process(
        "changegate.review_api", settings, free_port(), tmp_path / "svc.log", **unlimited
    ) as svc:
        # An admin, so bulk actions are reached too (not only their 403).
        _, token = await create_token(pool, "fuzzer@example.com", Role.ADMIN, created_by="test")
        # Real pending items, so decisions reach the queue, not only its 404.
        request = good_payload("review_request")
        assert isinstance(request, ReviewRequest)
        await queue.enqueue(pool, request)
        for _ in range(20):
            other = good_payload("review_request")
            assert isinstance(other, ReviewRequest)
            await queue.enqueue(pool, other)
        # Rules no schema can express, each answered 422: approve-with-changes for a field the
        # proposal does not change or a value of another type; bulk for ids and a filter together;
        # the list for a cursor it did not give (cursors are opaque); any POST for an
        # Idempotency-Key used before with another request. The event stream never ends by itself.
        decisions = "(approve|reject|approve-with-changes)"
        config = (
            f'[parameters]\n"path.proposal_id" = "{request.proposal.proposal_id}"\n'
            "[[operations]]\n"
            f'include-path-regex = "^/v1/proposals/\\\\{{proposal_id\\\\}}/{decisions}$"\n'
            "checks.positive_data_acceptance.expected-statuses ="
            ' ["2xx", "401", "403", "404", "409", "412", "422", "429"]\n'
            '[[operations]]\ninclude-path = "/v1/bulk"\n'
            'checks.positive_data_acceptance.expected-statuses = ["2xx", "409", "422", "429"]\n'
            '[[operations]]\ninclude-path = "/v1/events"\nenabled = false\n'
            '[[operations]]\ninclude-path = "/v1/proposals"\ninclude-method = "GET"\n'
            'checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "422"]\n'
        )
        await asyncio.to_thread(
            schemathesis,
            svc.url,
            tmp_path / "report.txt",
            "--header",
            f"Authorization: Bearer {token}",
            config=config,
        )


INGEST_SECRETS = {
    "CHANGEGATE_HUBSPOT_CLIENT_SECRET": "5b2e9c1d-0f3a-4e7b-8c6d-9a1b2c3d4e5f",
    **{
        variable: f"fuzz-{variable.lower()}"
        for variable in (
            "CHANGEGATE_INGEST_CLAY_TOKEN",
            "CHANGEGATE_INGEST_ZEROBOUNCE_SECRET",
            "CHANGEGATE_INGEST_NEVERBOUNCE_SECRET",
            "CHANGEGATE_INGEST_KICKBOX_SECRET",
            "CHANGEGATE_INGEST_SCORING_SECRET",
            "CHANGEGATE_INGEST_TYPEFORM_SECRET",
        )
    },
}


async def test_ingest_answers_every_input_as_documented(
    settings: CommonSettings, topics: None, tmp_path: Path
) -> None:
    """Every request signed as its source signs (tests/ingest_fuzz_hooks.py), so the fuzzer reaches
    the parsing, the mappings and the broker: no 5xx (the broker is up, so not even the documented
    503), nothing the document does not say. A payload valid by the document may still be one its
    source's mapping cannot read (a 422 naming the field): a rule of the source, not of the schema."""
    with service_process(
        "changegate.ingest", settings, free_port(), tmp_path / "svc.log", **INGEST_SECRETS
    ) as svc:
        config = (
            '[[operations]]\ninclude-path-regex = "^/v1/webhooks/"\n'
            'checks.positive_data_acceptance.expected-statuses = ["2xx", "404", "422"]\n'
        )
        env = {
            "SCHEMATHESIS_HOOKS": "ingest_fuzz_hooks",
            "PYTHONPATH": TESTS_DIR,
            "CHANGEGATE_FUZZ_BASE_URL": svc.url,
            "CHANGEGATE_FUZZ_SECRETS": json.dumps(INGEST_SECRETS),
        }
        await asyncio.to_thread(schemathesis, svc.url, tmp_path / "report.txt", config=config, env=env)
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{svc.url}/metrics")).text
    # The fuzzer got through the signatures: requests were accepted and events produced.
    assert 'changegate_ingest_requests_total{source="hubspot",status="200"}' in metrics
    assert "changegate_ingest_events_produced_total{" in metrics
    assert 'reason="bad_signature"' not in metrics


async def test_audit_api_answers_every_input_as_documented(
    settings: CommonSettings, topics: None, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    with service_process("changegate.audit", settings, free_port(), tmp_path / "svc.log") as svc:
        _, token = await create_token(pool, "auditor@example.com", Role.VIEWER, created_by="test")
        header = f"Authorization: Bearer {token}"
        await asyncio.to_thread(schemathesis, svc.url, tmp_path / "report.txt", "--header", header)


HOSTILE_BODIES: list[tuple[str, bytes, int]] = [
    ("approve", b'{"comment": "checked\\u0000"}', 422),
    ("approve", b'{"comment": "\\ud800"}', 422),
    ("approve", b'{"comment": "' + b"x" * 2001 + b'"}', 422),
    ("approve", b'{"comment": ["a"]}', 422),
    ("approve", b'{"comment": "ok", "decided_by": "mallory@example.com"}', 422),
    ("reject", b"{}", 422),
    ("reject", b'{"reason": ""}', 422),
    ("approve", b'{"comment": "ok"', 422),
    ("approve", b"[" * 5000 + b"]" * 5000, 400),
    ("approve", b'{"comment": NaN}', 422),
    ("reject", b'{"reason": "a", "reason": "b\\u0000"}', 422),
    ("approve-with-changes", b'{"changes": {"jobtitle": 12345}}', 422),
    ("approve-with-changes", b'{"changes": {"jobtitle": "CTO\\u0000"}}', 422),
    ("approve-with-changes", b'{"changes": {"jobtitle\\u0000": "CTO"}}', 422),
    ("approve-with-changes", b'{"changes": {"jobtitle": {"nested": 1}}}', 422),
    ("approve-with-changes", b'{"changes": {}}', 422),
    ("approve-with-changes", b'{"changes": {"hubspot_owner_id": "owner-1"}}', 422),
    ("approve-with-changes", b'{"changes": {"jobtitle": "' + b"x" * 70_000 + b'"}}', 422),
    ("approve", b'{"comment": "' + b"x" * 2_000_000 + b'"}', 413),
    (
        "approve-with-changes",
        b'{"changes": {"jobtitle": "Head of Data"}, "comment": "\\u00e9t\\u00e9 \\ud83d\\ude00"}',
        200,
    ),
]


async def test_hostile_decision_bodies_get_a_4xx_and_leave_the_item_pending(
    settings: CommonSettings, topics: None, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    with service_process("changegate.review_api", settings, free_port(), tmp_path / "svc.log") as svc:
        _, token = await create_token(pool, "fuzzer@example.com", Role.REVIEWER, created_by="test")
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=svc.url, headers=auth) as client:
            for action, body, expected in HOSTILE_BODIES:
                request = good_payload("review_request")
                assert isinstance(request, ReviewRequest)
                await queue.enqueue(pool, request)
                pid = request.proposal.proposal_id
                response = await client.post(
                    f"/v1/proposals/{pid}/{action}",
                    content=body,
                    headers={"Content-Type": "application/json"},
                )
                assert response.status_code == expected, (action, body[:80], response.text[:500])
                assert response.headers["content-type"].startswith(
                    "application/json" if expected == 200 else "application/problem+json"
                )
                status = await pool.fetchval("SELECT status FROM review_queue WHERE proposal_id = $1", pid)
                assert status == ("approved_with_changes" if expected == 200 else "pending"), body[:80]


async def test_policy_shadow_api_answers_every_input_as_documented(
    settings: CommonSettings, topics: None, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """The policy service's port: GET /v1/shadow beside the operations endpoints."""
    with service_process("changegate.policy", settings, free_port(), tmp_path / "svc.log") as svc:
        _, token = await create_token(pool, "viewer@example.com", Role.VIEWER, created_by="test")
        header = f"Authorization: Bearer {token}"
        await asyncio.to_thread(schemathesis, svc.url, tmp_path / "report.txt", "--header", header)
