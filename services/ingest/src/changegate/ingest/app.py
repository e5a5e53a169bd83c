"""Ingest entrypoint: signed webhooks in, CrmEvents on ``crm.events`` out.

A request is answered 2xx only once the broker has acknowledged every event it carried (acks=all);
a broker that does not answer in time gets the sender a 503 with Retry-After, and the sender's retry
carries the same event ids, which every consumer deduplicates on. Bad input is refused with a 4xx
problem+json and nothing is produced: 401 (signature or token missing, wrong or stale), 404 (no such
source), 413 (body over the limit), 422 (not JSON, or a payload the mapping cannot read, naming the
field). The service keeps no state and needs no database: it authenticates with each source's own
secret and only produces to Kafka."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Annotated, Any

from changegate.core import __version__
from changegate.core.contracts import CrmEvent
from changegate.core.http import ASGIApp, Message, Receive, Scope, Send, problem, problem_responses
from changegate.core.logging import get_logger
from changegate.core.serde import MessageLimits, parse_json
from changegate.core.service import Context, Parts, Service, ServiceRuntime
from changegate.core.settings import SECRETS_DIR
from changegate.core.topics import Topic
from changegate.ingest import hubspot, metrics
from changegate.ingest.produce import SERVICE, Publisher
from changegate.ingest.refusals import NotFoundError, PayloadError, RefusedError, SignatureError
from changegate.ingest.settings import IngestSettings
from changegate.ingest.signatures import (
    HUBSPOT_SIGNATURE_HEADER,
    HUBSPOT_TIMESTAMP_HEADER,
    verify_hubspot_v3,
)
from changegate.ingest.sources import Source, SourcesFileError, load_sources
from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

log = get_logger(__name__)
WEBHOOKS = "/v1/webhooks/"


class Accepted(BaseModel):
    accepted: int = Field(description="events the broker acknowledged (acks=all)")
    ignored: int = Field(
        description="events acknowledged without producing (of a type changegate has no use for)"
    )
    event_ids: list[uuid.UUID] = Field(
        description="the envelope id of each accepted event, in order; a redelivered event gets the same one"
    )


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RefusedError)
    request.state.refusal = exc.reason  # for RequestMetrics
    errors = exc.errors()
    return problem(exc.status, exc.detail, exc.headers or None, **({"errors": errors} if errors else {}))


# A refusal no handler labelled (the body limit, the framework's own answers) gets one by status.
_REASON_BY_STATUS = {
    400: "bad_request",
    404: "unknown_source",
    405: "bad_method",
    413: "too_large",
    422: "invalid",
}


class RequestMetrics:
    """Counts every webhook answer by source and status, and every refusal by reason — including
    the 413 the body limit answers before any route runs (so it wraps everything)."""

    def __init__(self, app: ASGIApp, known: set[str]) -> None:
        self.app, self.known = app, known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(WEBHOOKS):
            await self.app(scope, receive, send)
            return
        name = path[len(WEBHOOKS) :].split("/", 1)[0]
        source = name if name in self.known else "unknown"
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            metrics.REQUESTS.labels(source=source, status=str(status)).inc()
            if status >= 400:
                reason = (scope.get("state") or {}).get("refusal") or _REASON_BY_STATUS.get(status, "error")
                metrics.REFUSED.labels(source=source, reason=reason).inc()
                if status == 401:
                    metrics.SIGNATURE_FAILURES.labels(source=source, reason=reason).inc()


def full_uri(request: Request, public_base_url: str | None) -> str:
    """The URI the sender called, as HubSpot signs it: the public base URL (behind a proxy) or the
    request's own scheme and Host, then the path and query as sent."""
    raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    query: bytes = request.scope.get("query_string") or b""
    path = raw_path.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
    if public_base_url:
        return public_base_url.rstrip("/") + path
    return f"{request.url.scheme}://{request.headers.get('host') or request.url.netloc}{path}"


HUBSPOT_BODY = {
    "required": True,
    "description": "HubSpot's batch of webhook events (a JSON array), exactly as HubSpot sent it: the "
    "signature covers these bytes",
    "content": {
        "application/json": {
            "schema": {
                "type": "array",
                "minItems": 1,
                "maxItems": hubspot.MAX_BATCH,
                "items": hubspot.HubSpotEvent.model_json_schema(by_alias=True),
            },
            "example": [
                {
                    "eventId": 3816279340,
                    "subscriptionId": 25,
                    "portalId": 33,
                    "appId": 1160452,
                    "occurredAt": 1462216307945,
                    "subscriptionType": "contact.propertyChange",
                    "attemptNumber": 0,
                    "objectId": 1246965,
                    "changeSource": "CRM_UI",
                    "sourceId": "userId:7",
                    "propertyName": "lifecyclestage",
                    "propertyValue": "subscriber",
                },
                {
                    "eventId": 3816279480,
                    "subscriptionId": 22,
                    "portalId": 33,
                    "appId": 1160452,
                    "occurredAt": 1462216307945,
                    "subscriptionType": "contact.creation",
                    "attemptNumber": 0,
                    "objectId": 1246978,
                    "changeSource": "IMPORT",
                },
            ],
        }
    },
}
SOURCE_BODY = {
    "required": True,
    "description": "the source's payload (JSON), exactly as sent: its signature covers these bytes, and "
    "its mapping (the sources file) reads the CrmEvent fields from it",
    "content": {
        "application/json": {
            "schema": {},
            "example": {
                "record_id": "1246965",
                "object_type": "contact",
                "enrichment": {"jobtitle": "Head of Data"},
                "confidence": 0.93,
                "enriched_at": "2026-11-24T10:00:00Z",
            },
        }
    },
}
ERRORS = problem_responses(401, 404, 503)


def build_app(
    runtime: ServiceRuntime, settings: IngestSettings, publisher: Publisher, sources: dict[str, Source]
) -> FastAPI:
    app = FastAPI(
        title="changegate ingest",
        version=__version__,
        description="Signed webhooks from HubSpot and from pipelines (Clay, email verifiers, scoring and "
        "form tools) become CrmEvents on the crm.events topic. A 2xx means the broker stored every event; "
        "a 503 (with Retry-After) means retry — the same events keep the same ids. Generic sources, their "
        "authentication and their mappings are declared in the sources file "
        "(CHANGEGATE_INGEST_SOURCES_FILE).",
    )
    app.add_exception_handler(RefusedError, _refused)
    limits = MessageLimits(
        max_bytes=settings.http_max_body_bytes,
        max_depth=settings.message_max_depth,
        max_string_length=settings.message_max_string_length,
    )
    secret = settings.hubspot_client_secret
    echo_ids = frozenset(settings.hubspot_echo_source_ids)
    base_url = str(settings.public_base_url) if settings.public_base_url else None

    def parsed(body: bytes) -> Any:
        try:
            return parse_json(body, limits)
        except ValueError as exc:
            raise PayloadError(["body"], f"not valid JSON: {exc}", "json_invalid") from exc

    async def accept(source: str, events: list[tuple[CrmEvent, str]], ignored: int) -> Accepted:
        ids = await publisher.publish(source, events) if events else []
        if ignored:
            metrics.EVENTS_IGNORED.labels(source=source).inc(ignored)
        return Accepted(accepted=len(ids), ignored=ignored, event_ids=ids)

    @app.post(
        "/v1/webhooks/hubspot",
        tags=["webhooks"],
        summary="HubSpot webhook events (signature v3)",
        description="Contacts and companies: creation, restore, propertyChange, deletion, privacyDeletion, "
        "merge, and a contact's primary company associationChange (as its associatedcompanyid); other "
        f"types are acknowledged, not produced. Signed with {HUBSPOT_SIGNATURE_HEADER} and "
        f"{HUBSPOT_TIMESTAMP_HEADER} (HMAC-SHA256 with the app's client secret over method + URI + body + "
        "timestamp); a timestamp more than 5 minutes from now is refused.",
        response_model=Accepted,
        responses=ERRORS,
        openapi_extra={"requestBody": HUBSPOT_BODY},
    )
    async def hubspot_webhook(request: Request) -> Accepted:
        if secret is None:
            raise NotFoundError("unknown_source", "HubSpot webhooks are not configured here")
        body = await request.body()
        try:
            verify_hubspot_v3(
                secret.get_secret_value(),
                request.method,
                full_uri(request, base_url),
                body,
                request.headers.get(HUBSPOT_SIGNATURE_HEADER),
                request.headers.get(HUBSPOT_TIMESTAMP_HEADER),
                int(time.time() * 1000),
                settings.hubspot_max_age_seconds,
            )
        except SignatureError as exc:
            realm = f'HubSpot-Signature-v3 realm="changegate-ingest", header="{HUBSPOT_SIGNATURE_HEADER}"'
            exc.headers["WWW-Authenticate"] = realm
            raise
        batch = hubspot.parse_batch(parsed(body))
        mapped = hubspot.to_crm_events(batch, echo_ids)
        for event in batch:  # who made each change: how an operator finds the echo source id
            log.debug(
                "hubspot event",
                subscription_type=event.subscription_type,
                change_source=event.change_source,
                source_id=event.source_id,
                echo=event.source_id is not None and event.source_id in echo_ids,
            )
        return await accept(hubspot.SOURCE, mapped.events, len(mapped.ignored))

    @app.post(
        "/v1/webhooks/{source}",
        tags=["webhooks"],
        summary="A configured source's webhook (Clay, email verifiers, scoring, forms, …)",
        description="Authenticated as the sources file says for SOURCE (an HMAC signature header, with an "
        "optional timestamp header, or a bearer token); its mapping turns the payload (one record, or a "
        "batch) into CrmEvents. A name no source has is 404.",
        response_model=Accepted,
        responses=ERRORS,
        openapi_extra={"requestBody": SOURCE_BODY},
    )
    async def source_webhook(
        request: Request, source: Annotated[str, PathParam(description="the source's name")]
    ) -> Accepted:
        found = sources.get(source)
        if found is None:
            raise NotFoundError("unknown_source", f"no webhook source is named {source[:64]!r}")
        body = await request.body()
        try:
            found.authenticate(request.headers, body, time.time())
        except SignatureError as exc:
            exc.headers["WWW-Authenticate"] = found.challenge()
            raise
        mapped = found.to_crm_events(parsed(body))
        return await accept(source, mapped.events, mapped.ignored)

    hardened = runtime.app(app)
    _list_sources(hardened, sorted(sources))
    hardened.add_middleware(RequestMetrics, known={hubspot.SOURCE, *sources})
    return hardened


def _list_sources(app: FastAPI, names: list[str]) -> None:
    """The document names the configured sources (an enum of the path parameter); the route still
    answers any other name itself, with 404."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        operation = schema["paths"]["/v1/webhooks/{source}"]["post"]
        for parameter in operation.get("parameters", []):
            if parameter["name"] == "source":
                parameter["schema"] = {"type": "string", "enum": names} if names else {"type": "string"}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _sources(settings: IngestSettings) -> dict[str, Source]:
    try:
        return load_sources(
            settings.ingest_sources_file, secrets_dir=Path(SECRETS_DIR) if SECRETS_DIR else None
        )
    except SourcesFileError as exc:
        raise SystemExit(f"ingest: {exc}") from exc


def _check_sources(settings: IngestSettings) -> None:
    """The sources file is valid (else the service refuses to start, naming the source)."""
    _sources(settings)


async def setup(ctx: Context[IngestSettings]) -> Parts:
    settings = ctx.settings
    sources = _sources(settings)
    if settings.hubspot_client_secret is None:
        log.info("HubSpot webhooks off: CHANGEGATE_HUBSPOT_CLIENT_SECRET is not set")
    log.info("webhook sources", sources=sorted(sources), hubspot=settings.hubspot_client_secret is not None)
    publisher = Publisher(
        ctx.producer,
        ctx.names(Topic.CRM_EVENTS),
        settings.produce_timeout_seconds,
        settings.message_max_bytes,
        settings.retry_after_seconds,
    )
    return Parts(app=build_app(ctx.runtime, settings, publisher, sources))


INGEST = Service(
    SERVICE,
    IngestSettings,
    setup,
    database=False,
    check=_check_sources,
    topics=[Topic.CRM_EVENTS],
    # aiokafka gives up on a batch after request_timeout_ms: no later than a request waits for it.
    producer=lambda settings: {"request_timeout_ms": int(settings.produce_timeout_seconds * 1000)},
)
main = INGEST.main
