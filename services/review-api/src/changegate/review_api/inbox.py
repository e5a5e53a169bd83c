"""The review inbox: server-rendered pages for people, on the same queries and decisions as /v1.

Sign-in is a POST of an API token (or OIDC, where configured), kept in a session cookie that is
HttpOnly, SameSite=Strict (and Secure under https); every form that changes something carries a
CSRF token derived from the session (an HMAC keyed by it), and a POST from another origin is
refused. Pages send a strict Content-Security-Policy: scripts and styles from this origin only, no
inline script, no framing. Nothing secret ever goes in a URL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import urllib.parse
import uuid
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from changegate.core.auth import Principal, Role
from changegate.core.contracts import Proposal, ProposalKind
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.crm_event import ObjectType
from changegate.core.http import ASGIApp, Message, Receive, Scope, Send
from changegate.core.logging import get_logger
from changegate.review_api import events, store, views
from changegate.review_api.api import BulkBody, BulkFilter, decide, run_bulk
from changegate.review_api.decisions import Action
from changegate.review_api.settings import ReviewApiSettings
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError

log = get_logger(__name__)
SESSION_COOKIE = "changegate_session"
OIDC_COOKIE = "changegate_oidc"
PACKAGE = Path(str(resources.files("changegate.review_api")))
STATUSES = [
    "pending",
    "approved",
    "approved_with_changes",
    "rejected",
    "expired",
    "superseded",
    "auto_approved",
]
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: under no-referrer Chromium sends "Origin: null" with a form's POST,
    # and the origin check below needs the real one. Nothing leaves for another site either way.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}

templates = Environment(
    loader=FileSystemLoader(PACKAGE / "templates"), autoescape=select_autoescape(["html"]), enable_async=False
)


def _value(value: Any) -> str:
    """A CRM value as a reviewer reads it: empty is shown as such, not as nothing."""
    if value is None:
        return "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if str(value).strip() else "(blank)"


def _when(value: Any) -> str:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(value, datetime) else ""


def _age(value: Any) -> str:
    if not isinstance(value, datetime):
        return ""
    seconds = max(0, int((utcnow() - value).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


templates.filters["value"] = _value
templates.filters["when"] = _when
templates.filters["age"] = _age
templates.filters["label"] = lambda text: str(text or "").replace("_", " ")


class SecurityHeaders:
    """The page's headers on every HTML page and static file (not on the JSON API and its docs)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/" or path.startswith(("/inbox", "/static/"))):
            await self.app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.decode().lower() != "cache-control"
                ]
                headers += [(k.lower().encode(), v.encode()) for k, v in PAGE_HEADERS.items()]
                cache = "public, max-age=300" if path.startswith("/static/") else "no-store"
                headers.append((b"cache-control", cache.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, secured)


def csrf_token(session: str) -> str:
    return hmac.new(session.encode(), b"changegate-inbox-csrf", hashlib.sha256).hexdigest()


def _secure(settings: ReviewApiSettings) -> bool:
    return bool(settings.review_public_url and settings.review_public_url.startswith("https://"))


router = APIRouter(include_in_schema=False)


def render(request: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
    html = templates.get_template(name).render(request=request, **context)
    return HTMLResponse(html, status_code=code)


async def _session(request: Request) -> tuple[str, Principal] | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 8192:
        return None
    principal = await request.app.state.authenticator.authenticate(token)
    return (token, principal) if principal is not None else None


async def _form(request: Request) -> dict[str, list[str]]:
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise HTTPException(415, "send the form as application/x-www-form-urlencoded")
    body = await request.body()
    try:
        return urllib.parse.parse_qs(body.decode(), keep_blank_values=True, max_num_fields=2000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, "not a form") from exc


def _one(form: dict[str, list[str]], name: str, default: str = "") -> str:
    values = form.get(name)
    return values[0] if values else default


def _same_origin(request: Request) -> bool:
    """A browser says where a POST comes from; one from another site is refused."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    settings: ReviewApiSettings = request.app.state.settings
    own = (settings.review_public_url or f"{request.url.scheme}://{request.headers.get('host', '')}").rstrip(
        "/"
    )
    return origin.rstrip("/") == own


async def _signed_in_post(request: Request) -> tuple[Principal, dict[str, list[str]]]:
    """A POST of a signed-in page: same origin, a session, and the session's CSRF token."""
    if not _same_origin(request):
        raise HTTPException(403, "this form was posted from another site")
    session = await _session(request)
    if session is None:
        raise HTTPException(401, "your sign-in has ended: sign in again")
    form = await _form(request)
    if not hmac.compare_digest(_one(form, "csrf"), csrf_token(session[0])):
        raise HTTPException(403, "the form is stale or forged (CSRF token mismatch): reload the page")
    return session[1], form


def _base(request: Request, token: str, principal: Principal) -> dict[str, Any]:
    return {
        "principal": principal,
        "csrf": csrf_token(token),
        "is_admin": principal.may(Role.ADMIN),
        "oidc": bool(request.app.state.settings.review_oidc_client_id),
    }


def _error(
    request: Request, exc: HTTPException, session: tuple[str, Principal] | None = None
) -> HTMLResponse:
    context = _base(request, *session) if session else {}
    return render(
        request, "error.html", exc.status_code, status=exc.status_code, detail=exc.detail, **context
    )


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/inbox", status_code=303)


def _filters(request: Request) -> tuple[store.Filters, dict[str, str]]:
    """The list's filters from the page's query string; values it cannot use are dropped."""
    raw = {k: v for k, v in request.query_params.items() if v}
    chosen: dict[str, str] = {}
    filters = store.Filters()
    status = raw.get("status", "pending")
    if status in STATUSES or status == "any":
        filters.status = None if status == "any" else status
        chosen["status"] = status
    if raw.get("kind") in {k.value for k in ProposalKind}:
        filters.kind = chosen["kind"] = raw["kind"]
    if raw.get("object_type") in {o.value for o in ObjectType}:
        filters.object_type = chosen["object_type"] = raw["object_type"]
    for name in ("queue", "source_system", "record_id", "rule"):
        if name in raw and len(raw[name]) <= 256 and "\x00" not in raw[name]:
            setattr(filters, name, raw[name])
            chosen[name] = raw[name]
    for name in ("min_confidence", "max_confidence"):
        try:
            number = float(raw[name]) if name in raw else None
        except ValueError:
            number = None
        if number is not None and 0 <= number <= 1:
            setattr(filters, name, number)
            chosen[name] = raw[name]
    for name in ("min_age", "max_age"):
        try:
            age = store.parse_age(raw[name]) if name in raw else None
        except ValueError:
            age = None
        if age is not None:
            setattr(filters, name, age)
            chosen[name] = raw[name]
    return filters, chosen


@router.get("/inbox")
async def inbox(request: Request) -> Response:
    session = await _session(request)
    if session is None:
        return render(
            request,
            "signin.html",
            oidc=bool(request.app.state.settings.review_oidc_client_id),
            error=request.query_params.get("error"),
        )
    token, principal = session
    if not principal.may(Role.VIEWER):
        return _error(request, HTTPException(403, "your role does not include reading the queue"), session)
    filters, chosen = _filters(request)
    cursor = request.query_params.get("cursor")
    pool = request.app.state.pool
    try:
        rows, following = await store.page(pool, filters, principal, 50, cursor)
    except store.CursorError:
        rows, following = await store.page(pool, filters, principal, 50, None)
    stats = await store.statistics(pool, principal)
    next_query = urllib.parse.urlencode(chosen | {"cursor": following}) if following else None
    return render(
        request,
        "inbox.html",
        items=[views.summary(r) for r in rows],
        chosen=chosen,
        next_query=next_query,
        stats=stats,
        statuses=STATUSES,
        kinds=[k.value for k in ProposalKind],
        object_types=[o.value for o in ObjectType],
        events_url=f"/inbox/events?after={await store.last_seq(pool)}",
        **_base(request, token, principal),
    )


@router.post("/inbox/login")
async def login(request: Request) -> Response:
    if not _same_origin(request):
        return _error(request, HTTPException(403, "this form was posted from another site"))
    try:
        form = await _form(request)
    except HTTPException as exc:
        return _error(request, exc)
    token = _one(form, "token").strip()
    principal = await request.app.state.authenticator.authenticate(token) if 0 < len(token) <= 8192 else None
    if principal is None:
        return render(request, "signin.html", 401, error="That token is not valid (or has expired).")
    if not principal.may(Role.VIEWER):
        return render(request, "signin.html", 403, error="That token grants no role that reads the queue.")
    return _signed_in(request, token)


def _signed_in(request: Request, token: str) -> Response:
    settings: ReviewApiSettings = request.app.state.settings
    response = RedirectResponse("/inbox", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.review_session_hours * 3600,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(settings),
    )
    return response


@router.post("/inbox/logout")
async def logout(request: Request) -> Response:
    if not _same_origin(request):
        return _error(request, HTTPException(403, "this form was posted from another site"))
    response = RedirectResponse("/inbox", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/inbox/proposals/{proposal_id}")
async def item_page(request: Request, proposal_id: str) -> Response:
    session = await _session(request)
    if session is None:
        return RedirectResponse("/inbox", status_code=303)
    token, principal = session
    try:
        pid = uuid.UUID(proposal_id)
    except ValueError:
        return _error(request, HTTPException(404, "no such proposal"), session)
    return await _item(request, token, principal, pid)


async def _item(
    request: Request,
    token: str,
    principal: Principal,
    pid: uuid.UUID,
    status: int = 200,
    error: str | None = None,
) -> Response:
    pool = request.app.state.pool
    row = await store.item(pool, pid, principal)
    if row is None:
        return _error(request, HTTPException(404, f"no proposal {pid}"), (token, principal))
    history = await store.history(pool, pid)
    seen = await store.latest_values(pool, row["object_type"], row["record_id"])
    detail = views.detail(row, history, seen)
    may_decide = detail.status == "pending" and principal.may(
        Role.REVIEWER, queue=row["queue"], kind=row["kind"]
    )
    return render(
        request,
        "detail.html",
        status,
        item=detail,
        evidence_json=json.dumps(detail.evidence, indent=2, sort_keys=True, default=str),
        may_decide=may_decide,
        done=request.query_params.get("done"),
        error=error,
        # The stream starts after the last change this page shows: nothing in between is missed.
        events_url=f"/inbox/events?proposal_id={pid}&after={max((h['seq'] for h in history), default=0)}",
        **_base(request, token, principal),
    )


def _typed(text: str, like: Any) -> Any:
    """A form value in the type the proposal gives the field (a number stays a number)."""
    if text == "" and like is None:
        return None
    if isinstance(like, bool):
        lowered = text.strip().lower()
        return {"true": True, "false": False}.get(lowered, text)
    if isinstance(like, int | float):
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if isinstance(like, int) and number.is_integer() else number
    return text


@router.post("/inbox/proposals/{proposal_id}/{action}")
async def decide_page(request: Request, proposal_id: str, action: str) -> Response:
    try:
        principal, form = await _signed_in_post(request)
        pid = uuid.UUID(proposal_id)
    except HTTPException as exc:
        return _error(request, exc, await _session(request))
    except ValueError:
        return _error(request, HTTPException(404, "no such proposal"), await _session(request))
    token = request.cookies[SESSION_COOKIE]
    comment = _one(form, "comment").strip() or None
    modified: dict[str, Any] | None = None
    if action == "reject":
        comment = _one(form, "reason").strip()
        if not comment:
            return await _item(request, token, principal, pid, 422, "A rejection needs a reason.")
    elif action == "approve-with-changes":
        row = await store.item(request.app.state.pool, pid, principal)
        if row is None:
            return _error(request, HTTPException(404, "no such proposal"), (token, principal))
        proposal = Proposal.model_validate(row["proposal"])
        modified = {}
        for change in proposal.changes:
            if f"field:{change.field}" in form:
                like = change.proposed if change.proposed is not None else change.previous
                modified[change.field] = _typed(_one(form, f"field:{change.field}"), like)
    elif action != "approve":
        return _error(request, HTTPException(404, "no such action"), (token, principal))
    if comment is not None and len(comment) > 2000:
        return await _item(request, token, principal, pid, 422, "Keep comments under 2,000 characters.")
    try:
        await request.app.state.decision_limit.check(principal.subject)
        answer = await decide(
            request,
            principal,
            pid,
            Action.REJECT if action == "reject" else Action.APPROVE,
            comment,
            modified,
            None,
            None,
        )
    except HTTPException as exc:
        return await _item(request, token, principal, pid, exc.status_code, str(exc.detail))
    body = json.loads(answer.body)
    if answer.status != 200:
        return await _item(request, token, principal, pid, answer.status, body.get("detail"))
    return RedirectResponse(f"/inbox/proposals/{pid}?done={body['outcome']}", status_code=303)


@router.post("/inbox/bulk")
async def bulk_page(request: Request) -> Response:
    try:
        principal, form = await _signed_in_post(request)
    except HTTPException as exc:
        return _error(request, exc, await _session(request))
    token = request.cookies[SESSION_COOKIE]
    session = (token, principal)
    if not principal.may(Role.ADMIN):
        return _error(request, HTTPException(403, "bulk actions need the admin role"), session)
    scope = _one(form, "scope", "selected")
    chosen = {k[len("filter:") :]: v[0] for k, v in form.items() if k.startswith("filter:") and v and v[0]}
    try:
        ids = [uuid.UUID(x) for x in form.get("ids", [])]
        body = BulkBody(
            action=_one(form, "action", "approve"),
            ids=ids if scope == "selected" else None,
            filter=BulkFilter(**{k: v for k, v in chosen.items() if k != "status"})
            if scope == "filter"
            else None,
            reason=_one(form, "reason").strip() or None,
            comment=(_one(form, "comment") or _one(form, "reason")).strip() or None,
            dry_run=_one(form, "dry_run") == "1",
            max_items=int(_one(form, "max_items", "100") or "100"),
        )
    except (ValueError, ValidationError) as exc:
        message = "choose at least one item" if scope == "selected" and not form.get("ids") else str(exc)
        return _error(request, HTTPException(422, f"the bulk form is not complete: {message}"[:500]), session)
    if body.action == "reject" and not body.reason:
        return _error(request, HTTPException(422, "a bulk rejection needs a reason"), session)
    try:
        await request.app.state.decision_limit.check(principal.subject)
        answer = await run_bulk(request, principal, body)
    except HTTPException as exc:
        return _error(request, exc, session)
    return render(
        request,
        "bulk.html",
        result=json.loads(answer.body),
        body=body,
        form_items=[(k, v) for k, values in form.items() if k not in ("csrf", "dry_run") for v in values],
        **_base(request, token, principal),
    )


@router.get("/inbox/events")
async def page_events(request: Request) -> Response:
    session = await _session(request)
    if session is None:
        raise HTTPException(401, "sign in first")
    raw = request.query_params.get("proposal_id")
    try:
        pid = uuid.UUID(raw) if raw else None
    except ValueError as exc:
        raise HTTPException(422, "proposal_id: not a UUID") from exc
    # A reconnecting EventSource says where it was; a page says where it started (?after=).
    last = request.headers.get("last-event-id") or request.query_params.get("after")
    return StreamingResponse(
        events.stream(
            request.app.state.hub,
            request.app.state.pool,
            events.Subscriber(session[1], pid),
            int(last) if last and last.isdigit() and len(last) < 19 else None,
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )


# -- OIDC sign-in (authorization code with PKCE) ----------------------------------------------------


async def _oidc_endpoints(request: Request) -> dict[str, str]:
    settings: ReviewApiSettings = request.app.state.settings
    cached: dict[str, str] | None = getattr(request.app.state, "oidc_endpoints", None)
    if cached is None:
        issuer = (settings.auth_oidc_issuer or "").rstrip("/")
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{issuer}/.well-known/openid-configuration")
            response.raise_for_status()
            document = response.json()
        cached = {k: str(document[k]) for k in ("authorization_endpoint", "token_endpoint")}
        request.app.state.oidc_endpoints = cached
    return cached


def _redirect_uri(settings: ReviewApiSettings) -> str:
    return f"{(settings.review_public_url or '').rstrip('/')}/inbox/oidc/callback"


@router.get("/inbox/login/oidc")
async def oidc_start(request: Request) -> Response:
    settings: ReviewApiSettings = request.app.state.settings
    if not settings.review_oidc_client_id:
        return _error(request, HTTPException(404, "OIDC sign-in is not configured"))
    try:
        endpoints = await _oidc_endpoints(request)
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        log.warning("OIDC discovery failed", error=repr(exc))
        return _error(request, HTTPException(503, "the identity provider does not answer; try again"))
    state, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": settings.review_oidc_client_id,
            "redirect_uri": _redirect_uri(settings),
            "scope": settings.review_oidc_scopes,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    response = RedirectResponse(f"{endpoints['authorization_endpoint']}?{query}", status_code=303)
    # Lax, not Strict: the provider sends the browser back here from another site.
    response.set_cookie(
        OIDC_COOKIE,
        f"{state}.{verifier}",
        max_age=600,
        path="/inbox/oidc",
        httponly=True,
        samesite="lax",
        secure=_secure(settings),
    )
    return response


@router.get("/inbox/oidc/callback")
async def oidc_callback(request: Request) -> Response:
    settings: ReviewApiSettings = request.app.state.settings
    state, _, verifier = request.cookies.get(OIDC_COOKIE, "").partition(".")
    code = request.query_params.get("code")
    if not settings.review_oidc_client_id or not state or not code:
        return RedirectResponse("/inbox?error=sign-in+was+not+completed", status_code=303)
    if not hmac.compare_digest(request.query_params.get("state", ""), state):
        return _error(request, HTTPException(403, "the sign-in answer does not belong to this browser"))
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": _redirect_uri(settings),
        "client_id": settings.review_oidc_client_id,
        "code_verifier": verifier,
    }
    if settings.review_oidc_client_secret:
        form["client_secret"] = settings.review_oidc_client_secret.get_secret_value()
    try:
        endpoints = await _oidc_endpoints(request)
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(endpoints["token_endpoint"], data=form)
            answer.raise_for_status()
            tokens = answer.json()
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        log.warning("OIDC code exchange failed", error=repr(exc))
        return _error(request, HTTPException(502, "the identity provider refused the sign-in"))
    for name in ("access_token", "id_token"):
        token = tokens.get(name) if isinstance(tokens, dict) else None
        principal = (
            await request.app.state.authenticator.authenticate(token) if isinstance(token, str) else None
        )
        if isinstance(token, str) and principal is not None and principal.may(Role.VIEWER):
            response = _signed_in(request, token)
            response.delete_cookie(OIDC_COOKIE, path="/inbox/oidc")
            return response
    return _error(
        request, HTTPException(403, "the identity provider's token is not accepted here (audience, role)")
    )


def install(app: Any) -> None:
    """The inbox's routes, its static files and the page headers."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=PACKAGE / "static"), name="static")
    app.add_middleware(SecurityHeaders)
