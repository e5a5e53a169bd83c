"""The ingest service as a process, on the real broker: real signed requests (signatures computed
here with hmac from the secrets), every success and every refusal, what lands on crm.events, and
what the metrics count. Nothing refused is produced; a redelivery gets the same event ids."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from changegate.cli.embedded import free_port
from changegate.core.contracts import CrmEventKind
from changegate.core.serde import decode
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames
from helpers import ServiceProcess, read_topic, service_process

HUBSPOT_SECRET = "3f1f0e9c-1b2a-4c5d-8e7f-0a9b8c7d6e5f"
OUR_APP = "1160452"  # the sourceId HubSpot gives changegate's own writes
SECRETS = {
    "CHANGEGATE_HUBSPOT_CLIENT_SECRET": HUBSPOT_SECRET,
    "CHANGEGATE_INGEST_CLAY_TOKEN": "clay-token-0123456789abcdef",
    "CHANGEGATE_INGEST_ZEROBOUNCE_SECRET": "zerobounce-secret-0123456789",
    "CHANGEGATE_INGEST_NEVERBOUNCE_SECRET": "neverbounce-secret-0123456789",
    "CHANGEGATE_INGEST_KICKBOX_SECRET": "kickbox-secret-0123456789",
    "CHANGEGATE_INGEST_SCORING_SECRET": "scoring-secret-0123456789",
    "CHANGEGATE_INGEST_TYPEFORM_SECRET": "typeform-secret-0123456789",
}
MAX_BODY = 65_536


@pytest.fixture(scope="module")
def ingest_settings(kafka_bootstrap: str) -> CommonSettings:
    return CommonSettings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=f"i{uuid.uuid4().hex[:8]}.")


@pytest.fixture(scope="module")
def ingest(
    ingest_settings: CommonSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    log = tmp_path_factory.mktemp("ingest") / "ingest.log"
    env = {
        **SECRETS,
        "CHANGEGATE_HUBSPOT_ECHO_SOURCE_IDS": json.dumps([OUR_APP]),
        "CHANGEGATE_HTTP_MAX_BODY_BYTES": str(MAX_BODY),
    }
    with service_process("changegate.ingest", ingest_settings, free_port(), log, **env) as svc:
        yield svc


@pytest.fixture
async def client(ingest: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ingest.url, timeout=30) as client:
        yield client


# --- senders, signing as each source documents it -------------------------------------------------


def hubspot_headers(
    url: str, body: bytes, *, at_ms: int | None = None, secret: str = HUBSPOT_SECRET
) -> dict[str, str]:
    stamp = str(at_ms if at_ms is not None else int(time.time() * 1000))
    digest = hmac.new(
        secret.encode(), b"POST" + url.encode() + body + stamp.encode(), hashlib.sha256
    ).digest()
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
        "X-HubSpot-Request-Timestamp": stamp,
    }


def changegate_signature(secret_variable: str, body: bytes, at: int | None = None) -> dict[str, str]:
    stamp = str(at if at is not None else int(time.time()))
    digest = hmac.new(
        SECRETS[secret_variable].encode(), f"{stamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    return {"X-Changegate-Timestamp": stamp, "X-Changegate-Signature": f"sha256={digest}"}


def b64_hmac(secret_variable: str, body: bytes, algorithm: str) -> str:
    digest = hmac.new(SECRETS[secret_variable].encode(), body, getattr(hashlib, algorithm)).digest()
    return base64.b64encode(digest).decode()


def signed(source: str, body: bytes) -> dict[str, str]:
    """What each shipped source's sender adds to a request."""
    if source == "clay":
        return {"Authorization": f"Bearer {SECRETS['CHANGEGATE_INGEST_CLAY_TOKEN']}"}
    if source == "scoring":
        return {"X-Signature": b64_hmac("CHANGEGATE_INGEST_SCORING_SECRET", body, "sha512")}
    if source == "typeform":
        return {
            "Typeform-Signature": "sha256=" + b64_hmac("CHANGEGATE_INGEST_TYPEFORM_SECRET", body, "sha256")
        }
    return changegate_signature(f"CHANGEGATE_INGEST_{source.upper()}_SECRET", body)


def hubspot_event(event_id: int, subscription_type: str, **fields: Any) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "subscriptionId": 25,
        "portalId": 62515,
        "appId": 1160452,
        "occurredAt": int(time.time() * 1000),
        "subscriptionType": subscription_type,
        "attemptNumber": 0,
        **fields,
    }


def new_id() -> int:
    return uuid.uuid4().int % 10**12


async def post_hubspot(
    client: httpx.AsyncClient, batch: list[dict[str, Any]], **signing: Any
) -> httpx.Response:
    body = json.dumps(batch).encode()
    url = f"{client.base_url}/v1/webhooks/hubspot".replace("//v1", "/v1")
    return await client.post(
        "/v1/webhooks/hubspot", content=body, headers=hubspot_headers(url, body, **signing)
    )


async def post_source(client: httpx.AsyncClient, source: str, payload: Any) -> httpx.Response:
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **signed(source, body)}
    return await client.post(f"/v1/webhooks/{source}", content=body, headers=headers)


async def on_topic(settings: CommonSettings, wanted: list[str], timeout: float = 20) -> dict[str, Any]:
    """Envelope id -> (key, envelope) of what is on crm.events, read from the start until every
    ``wanted`` envelope id is there (or the timeout)."""
    consumer = AIOKafkaConsumer(
        TopicNames(settings.topic_prefix)(Topic.CRM_EVENTS),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    out: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while not set(wanted) <= out.keys() and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    envelope = decode(record.value)
                    out[str(envelope.event_id)] = (record.key.decode(), envelope)
    finally:
        await consumer.stop()
    return out


def metric(exposition: str, name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in exposition.splitlines():
        if line.startswith(name + "{") and all(w in line for w in wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- successes ------------------------------------------------------------------------------------


async def test_a_signed_hubspot_batch_lands_as_one_crm_event_per_record_event(
    client: httpx.AsyncClient, ingest_settings: CommonSettings
) -> None:
    contact, company = new_id(), new_id()
    batch = [
        hubspot_event(new_id(), "contact.creation", objectId=contact),
        hubspot_event(
            new_id(),
            "contact.propertyChange",
            objectId=contact,
            propertyName="email",
            propertyValue="ada@acme.example",
        ),
        hubspot_event(
            new_id(), "company.propertyChange", objectId=company, propertyName="name", propertyValue="Acme"
        ),
        hubspot_event(
            new_id(),
            "contact.propertyChange",
            objectId=contact,
            propertyName="jobtitle",
            propertyValue="CTO",
            changeSource="INTEGRATION",
            sourceId=OUR_APP,
        ),
        hubspot_event(new_id(), "deal.creation", objectId=new_id()),
    ]
    response = await post_hubspot(client, batch)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["accepted"], answer["ignored"]) == (4, 1)
    stored = await on_topic(ingest_settings, answer["event_ids"])
    events = [stored[i] for i in answer["event_ids"]]  # every acknowledged event is on the topic
    assert [key for key, _ in events] == [str(contact), str(contact), str(company), str(contact)]
    kinds = [(e.payload.kind, e.payload.object_type.value, e.payload.properties) for _, e in events]
    assert kinds == [
        (CrmEventKind.RECORD_CREATED, "contact", {}),
        (CrmEventKind.PROPERTY_CHANGED, "contact", {"email": "ada@acme.example"}),
        (CrmEventKind.PROPERTY_CHANGED, "company", {"name": "Acme"}),
        (CrmEventKind.PROPERTY_CHANGED, "contact", {"jobtitle": "CTO"}),
    ]
    assert [e.payload.echo for _, e in events] == [False, False, False, True]
    assert {e.payload.requested_by for _, e in events} == {"ingest:hubspot"}
    assert {e.producer.service for _, e in events} == {"ingest"}


async def test_a_redelivered_hubspot_batch_gets_the_same_event_ids(
    client: httpx.AsyncClient, ingest_settings: CommonSettings
) -> None:
    record = new_id()
    batch = [
        hubspot_event(
            new_id(), "contact.propertyChange", objectId=record, propertyName="city", propertyValue="Paris"
        )
    ]
    first = await post_hubspot(client, batch)
    # HubSpot retries: same eventId, a later attempt, a new timestamp and signature.
    retry = await post_hubspot(client, [{**batch[0], "attemptNumber": 1}])
    assert first.status_code == retry.status_code == 200
    assert first.json()["event_ids"] == retry.json()["event_ids"]
    [event_id] = first.json()["event_ids"]
    stored = await on_topic(ingest_settings, [event_id])
    assert stored[event_id][1].payload.source_event_id == f"62515:{batch[0]['eventId']}"


SOURCE_PAYLOADS: list[tuple[str, dict[str, Any], CrmEventKind, int]] = [
    (
        "clay",
        {"record_id": "501", "object_type": "contact", "enrichment": {"jobtitle": "CTO"}, "confidence": 0.9},
        CrmEventKind.ENRICHMENT_RESULT,
        1,
    ),
    (
        "zerobounce",
        {
            "record_id": "502",
            "result": {
                "address": "a@b.example",
                "status": "valid",
                "sub_status": "",
                "processed_at": "2026-11-24 10:00:00.000",
            },
        },
        CrmEventKind.VERIFICATION_RESULT,
        1,
    ),
    (
        "neverbounce",
        {
            "status": "success",
            "results": [
                {
                    "data": {"id": "503", "email": "c@d.example"},
                    "verification": {"result": "catchall", "flags": []},
                },
                {
                    "data": {"id": "504", "email": "e@f.example"},
                    "verification": {"result": "valid", "flags": ["has_dns"]},
                },
            ],
        },
        CrmEventKind.VERIFICATION_RESULT,
        2,
    ),
    (
        "kickbox",
        {
            "record_id": "505",
            "result": {"email": "g@h.example", "result": "risky", "accept_all": True, "disposable": False},
        },
        CrmEventKind.VERIFICATION_RESULT,
        1,
    ),
    (
        "scoring",
        {"event_id": f"sc-{uuid.uuid4().hex}", "record_id": "506", "score": 0.91, "model": "fit-v3"},
        CrmEventKind.SCORE,
        1,
    ),
    (
        "typeform",
        {
            "event_id": f"tf-{uuid.uuid4().hex}",
            "event_type": "form_response",
            "form_response": {
                "form_id": "f",
                "hidden": {"contact_id": "507", "form_type": "demo_request"},
                "definition": {"title": "Demo"},
            },
        },
        CrmEventKind.LIFECYCLE_EVENT,
        1,
    ),
]


@pytest.mark.parametrize(
    ("source", "payload", "kind", "count"), SOURCE_PAYLOADS, ids=[p[0] for p in SOURCE_PAYLOADS]
)
async def test_each_shipped_source_lands_its_events(
    client: httpx.AsyncClient,
    ingest_settings: CommonSettings,
    source: str,
    payload: dict[str, Any],
    kind: CrmEventKind,
    count: int,
) -> None:
    response = await post_source(client, source, payload)
    assert response.status_code == 200, response.text
    ids = response.json()["event_ids"]
    assert len(ids) == count
    stored = await on_topic(ingest_settings, ids)
    for event_id in ids:
        key, envelope = stored[event_id]
        assert envelope.payload.kind is kind
        assert key == envelope.payload.record_id
        assert envelope.payload.requested_by == f"ingest:{source}"
    again = await post_source(client, source, payload)  # the same delivery again: the same events
    assert again.json()["event_ids"] == ids


# --- refusals: nothing produced, each counted -------------------------------------------------------


async def test_every_refusal_is_a_problem_and_produces_nothing(
    client: httpx.AsyncClient, ingest: ServiceProcess, ingest_settings: CommonSettings
) -> None:
    before_metrics = (await client.get("/metrics")).text
    topic = TopicNames(ingest_settings.topic_prefix)(Topic.CRM_EVENTS)
    before = len(await read_topic(ingest_settings.kafka_bootstrap_servers, topic, 10_000, timeout=3))
    url = f"{ingest.url}/v1/webhooks/hubspot"
    record = new_id()
    batch = json.dumps([hubspot_event(new_id(), "contact.creation", objectId=record)]).encode()
    clay = json.dumps({"record_id": "9", "enrichment": {"jobtitle": "CTO"}}).encode()
    stale_ms = int(time.time() * 1000) - 301_000

    async def hubspot(body: bytes, headers: dict[str, str]) -> httpx.Response:
        return await client.post("/v1/webhooks/hubspot", content=body, headers=headers)

    cases: list[tuple[str, httpx.Response, int, str, str]] = [
        (
            "no signature",
            await hubspot(batch, {"Content-Type": "application/json"}),
            401,
            "hubspot",
            "missing_signature",
        ),
        (
            "another app's secret",
            await hubspot(batch, hubspot_headers(url, batch, secret="x" * 36)),
            401,
            "hubspot",
            "bad_signature",
        ),
        (
            "body changed",
            await hubspot(batch + b" ", hubspot_headers(url, batch)),
            401,
            "hubspot",
            "bad_signature",
        ),
        (
            "stale",
            await hubspot(batch, hubspot_headers(url, batch, at_ms=stale_ms)),
            401,
            "hubspot",
            "stale_timestamp",
        ),
        ("not JSON", await hubspot(b"[{", hubspot_headers(url, b"[{")), 422, "hubspot", "invalid_payload"),
        (
            "no objectId",
            await hubspot(
                body := json.dumps([hubspot_event(1, "contact.creation")]).encode(),
                hubspot_headers(url, body),
            ),
            422,
            "hubspot",
            "invalid_payload",
        ),
        (
            "too large",
            await hubspot(b"[" + b" " * MAX_BODY + b"]", hubspot_headers(url, b"[]")),
            413,
            "hubspot",
            "too_large",
        ),
        (
            "unknown source",
            await client.post("/v1/webhooks/salesloft", content=clay),
            404,
            "unknown",
            "unknown_source",
        ),
        (
            "clay without token",
            await client.post("/v1/webhooks/clay", content=clay),
            401,
            "clay",
            "missing_token",
        ),
        (
            "clay with another's token",
            await client.post(
                "/v1/webhooks/clay",
                content=clay,
                headers={"Authorization": "Bearer " + SECRETS["CHANGEGATE_INGEST_SCORING_SECRET"]},
            ),
            401,
            "clay",
            "bad_token",
        ),
        (
            "zerobounce stale",
            await client.post(
                "/v1/webhooks/zerobounce",
                content=clay,
                headers=changegate_signature(
                    "CHANGEGATE_INGEST_ZEROBOUNCE_SECRET", clay, at=int(time.time()) - 400
                ),
            ),
            401,
            "zerobounce",
            "stale_timestamp",
        ),
        (
            "clay row without a record",
            await post_source(client, "clay", {"enrichment": {"jobtitle": "CTO"}}),
            422,
            "clay",
            "invalid_payload",
        ),
    ]
    for what, response, status, _, reason in cases:
        assert response.status_code == status, (what, response.text)
        assert response.headers["content-type"].startswith("application/problem+json"), what
        problem = response.json()
        assert problem["status"] == status, what
        if status == 401:
            assert response.headers.get("www-authenticate"), what
        if reason == "stale_timestamp":
            assert "old: requests more than 300 s away from now are refused" in problem["detail"], problem
    # 422 names the field.
    assert cases[4][1].json()["errors"][0]["loc"] == ["body"]
    assert cases[5][1].json()["errors"][0]["loc"] == ["body", 0, "objectId"]
    assert cases[-1][1].json()["errors"][0]["loc"] == ["body", "record_id"]

    after = len(await read_topic(ingest_settings.kafka_bootstrap_servers, topic, 10_000, timeout=3))
    assert after == before, "a refused request produced something"

    exposition = (await client.get("/metrics")).text
    for what, _, status, source, reason in cases:
        counted = metric(exposition, "changegate_ingest_refused_total", source=source, reason=reason)
        assert counted > metric(
            before_metrics, "changegate_ingest_refused_total", source=source, reason=reason
        ), what
        requests = metric(exposition, "changegate_ingest_requests_total", source=source, status=str(status))
        assert requests >= 1, what
    assert (
        metric(
            exposition,
            "changegate_ingest_signature_failures_total",
            source="hubspot",
            reason="stale_timestamp",
        )
        >= 1
    )
    assert (
        metric(exposition, "changegate_ingest_events_produced_total", source="hubspot", kind="record_created")
        >= 1
    )
    assert "changegate_ingest_produce_duration_seconds_bucket" in exposition
