"""The demo's events delivered the way their senders deliver them to the ingest service: HubSpot's
signed batches (a creation, then a propertyChange per property, as HubSpot reports a new record),
Clay's row with its bearer token, ZeroBounce and NeverBounce results forwarded by a pipeline step,
lead scores, and Typeform submissions — each signed as the shipped sources.yaml says."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from changegate.core.contracts import CrmEvent, CrmEventKind
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

HUBSPOT_SECRET_VARIABLE = "CHANGEGATE_HUBSPOT_CLIENT_SECRET"
# The portal id of HubSpot's documentation examples.
DEMO_PORTAL_ID = 62515
# Identifying properties first, the owner before the territory: the detector keeps what it learns
# of each record and decides on what it knows so far (see the README's ingest section).
PROPERTY_ORDER = ("hubspot_owner_id", "email", "phone", "company", "city", "zip", "country", "state")


@dataclass(frozen=True)
class IngestTarget:
    """Where an ingest service listens and the secrets of its sources (`dev up` writes them)."""

    url: str
    secrets: dict[str, str]

    @classmethod
    def load(cls, path: Path) -> IngestTarget | None:
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        return cls(str(raw["url"]), {str(k): str(v) for k, v in raw["secrets"].items()})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"url": self.url, "secrets": self.secrets}))
        path.chmod(0o600)


@dataclass(frozen=True)
class Delivery:
    source: str  # hubspot, or a source of sources.yaml
    body: bytes


class RetryLaterError(Exception):
    """The ingest answered 503: the broker is away and the events were not stored."""


def _event_id() -> int:
    return uuid.uuid4().int % 10**12


def _iso(event: CrmEvent) -> str:
    return (event.occurred_at.isoformat() if event.occurred_at else None) or time.strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def hubspot_batch(event: CrmEvent) -> list[dict[str, Any]]:
    """A record created in HubSpot, as HubSpot reports it: a creation (no properties), then a
    propertyChange for each property set; a record changed: a propertyChange for each property."""
    occurred = int((event.occurred_at.timestamp() if event.occurred_at else time.time()) * 1000)
    common: dict[str, Any] = {
        "portalId": DEMO_PORTAL_ID,
        "appId": 1160452,
        "subscriptionId": 1,
        "occurredAt": occurred,
        "attemptNumber": 0,
        "objectId": int(event.record_id),
        "changeSource": "CRM_UI",
        "sourceId": "userId:1",
    }
    prefix = event.object_type.value
    batch = (
        [
            {
                **common,
                "eventId": _event_id(),
                "subscriptionType": f"{prefix}.creation",
                "changeFlag": "CREATED",
            }
        ]
        if event.kind is CrmEventKind.RECORD_CREATED
        else []
    )
    rank = {name: i for i, name in enumerate(PROPERTY_ORDER)}
    for name in sorted(event.properties, key=lambda p: rank.get(p, len(rank))):
        value = event.properties[name]
        batch.append(
            {
                **common,
                "eventId": _event_id(),
                "subscriptionType": f"{prefix}.propertyChange",
                "propertyName": name,
                "propertyValue": "" if value is None else str(value),
            }
        )
    return batch


def deliveries(event: CrmEvent) -> Iterator[Delivery]:
    """What the sender of ``event`` posts."""
    props, when = event.properties, _iso(event)
    if (
        event.kind in (CrmEventKind.RECORD_CREATED, CrmEventKind.PROPERTY_CHANGED)
        and event.source_system == "hubspot"
    ):
        yield Delivery("hubspot", json.dumps(hubspot_batch(event)).encode())
    elif event.kind is CrmEventKind.ENRICHMENT_RESULT:
        row = {"record_id": event.record_id, "object_type": event.object_type.value, "enrichment": props}
        yield Delivery(
            "clay", json.dumps({**row, "confidence": event.confidence, "enriched_at": when}).encode()
        )
    elif event.kind is CrmEventKind.LIFECYCLE_EVENT:
        response = {
            "form_id": "demo",
            "token": event.source_event_id,
            "submitted_at": when,
            "hidden": {"contact_id": event.record_id, "form_type": props.get("form_type")},
            "definition": {
                "id": "demo",
                "title": str(props.get("form_type")).replace("_", " "),
                "fields": [],
            },
            "answers": [],
        }
        body = {"event_id": event.source_event_id, "event_type": "form_response", "form_response": response}
        yield Delivery("typeform", json.dumps(body).encode())
    elif event.kind is CrmEventKind.SCORE:
        score = {"event_id": event.source_event_id, "record_id": event.record_id, "scored_at": when}
        yield Delivery(
            "scoring", json.dumps({**score, "score": props["score"], "model": props["model"]}).encode()
        )
    elif event.kind is CrmEventKind.VERIFICATION_RESULT and event.source_system == "zerobounce":
        result = {
            "address": props["email"],
            "status": props["status"],
            "sub_status": "",
            "processed_at": when,
        }
        yield Delivery("zerobounce", json.dumps({"record_id": event.record_id, "result": result}).encode())
    elif event.kind is CrmEventKind.VERIFICATION_RESULT and event.source_system == "neverbounce":
        verification: dict[str, Any] = {
            "result": props["status"],
            "flags": ["has_dns", "has_dns_mx"],
            "suggested_correction": "",
        }
        result_row: dict[str, Any] = {
            "data": {"id": event.record_id, "email": props["email"]},
            "verification": verification,
        }
        yield Delivery("neverbounce", json.dumps({"status": "success", "results": [result_row]}).encode())
    else:
        raise ValueError(f"the demo has no sender for a {event.kind.value} event of {event.source_system}")


class WebhookSender:
    """Signs and posts deliveries to an ingest service. A 503 is retried (signed anew: the
    timestamp is signed), as HubSpot and any decent sender would; anything else but 2xx is an error."""

    def __init__(self, target: IngestTarget, client: httpx.AsyncClient) -> None:
        from changegate.ingest.sources import load_sources

        self.target, self.client = target, client
        self.hubspot_secret = target.secrets[HUBSPOT_SECRET_VARIABLE]
        self.sources = load_sources(None, environ=target.secrets)

    def headers(self, delivery: Delivery, url: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if delivery.source == "hubspot":
            from changegate.ingest import signatures

            stamp = str(int(time.time() * 1000))
            secret, body = self.hubspot_secret, delivery.body
            signature = signatures.hubspot_signature_v3(secret, "POST", url, body, stamp)
            return headers | {
                signatures.HUBSPOT_SIGNATURE_HEADER: signature,
                signatures.HUBSPOT_TIMESTAMP_HEADER: stamp,
            }
        return headers | self.sources[delivery.source].sign(delivery.body, time.time())

    async def send(self, event: CrmEvent) -> None:
        for delivery in deliveries(event):
            url = f"{self.target.url}/v1/webhooks/{delivery.source}"
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type((RetryLaterError, httpx.TransportError)),
                wait=wait_exponential(multiplier=0.5, max=5),
                stop=stop_after_delay(120),
                reraise=True,
            ):
                with attempt:
                    response = await self.client.post(
                        url, content=delivery.body, headers=self.headers(delivery, url)
                    )
                    if response.status_code == 503:
                        raise RetryLaterError(response.text)
                    if response.status_code >= 300:
                        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:500]}")
