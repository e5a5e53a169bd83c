"""HubSpot webhooks through every running service: contacts created in HubSpot reach the detector
through signed webhooks and a merge waits for review; HubSpot redelivering a batch changes nothing
downstream; a merge done in HubSpot reaches the detector, which forgets the merged-away record, so
the next duplicate is matched to the survivor alone."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import asyncpg
import httpx
from changegate.cli.devstack import DevStack
from helpers import eventually, review_items

ADA = {
    "firstname": "Ada",
    "lastname": "Lovelace",
    "email": "ada.lovelace@analytical.example",
    "phone": "+1 415 555 0199",
    "company": "Analytical Engines",
}


def ids() -> int:
    return uuid.uuid4().int % 10**12


def created_in_hubspot(record: int, properties: dict[str, str]) -> list[dict[str, Any]]:
    """A contact created in HubSpot's UI, as HubSpot reports it: a creation, then the properties."""
    common = {
        "portalId": 62515,
        "occurredAt": int(time.time() * 1000),
        "attemptNumber": 0,
        "objectId": record,
    }
    return [
        {**common, "eventId": ids(), "subscriptionType": "contact.creation"},
        *(
            {
                **common,
                "eventId": ids(),
                "subscriptionType": "contact.propertyChange",
                "propertyName": k,
                "propertyValue": v,
            }
            for k, v in properties.items()
        ),
    ]


async def deliver(client: httpx.AsyncClient, stack: DevStack, batch: list[dict[str, Any]]) -> list[str]:
    url = f"http://127.0.0.1:{stack.ports['ingest']}/v1/webhooks/hubspot"
    body, stamp = json.dumps(batch).encode(), str(int(time.time() * 1000))
    secret = stack.ingest_secrets["CHANGEGATE_HUBSPOT_CLIENT_SECRET"].encode()
    signature = base64.b64encode(
        hmac.new(secret, b"POST" + url.encode() + body + stamp.encode(), hashlib.sha256).digest()
    )
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": signature.decode(),
        "X-HubSpot-Request-Timestamp": stamp,
    }
    response = await client.post(url, content=body, headers=headers)
    assert response.status_code == 200, response.text
    event_ids: list[str] = response.json()["event_ids"]
    return event_ids


async def merges_naming(client: httpx.AsyncClient, stack: DevStack, record: int) -> list[dict[str, Any]]:
    review = f"http://127.0.0.1:{stack.ports['review-api']}"
    return await review_items(client, review, str(record), kind="merge")


def detector_duplicates(exposition: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith("changegate_detector_events_total{") and 'outcome="duplicate"' in line
    )


async def test_hubspot_webhooks_reach_the_detector_and_a_hubspot_merge_is_followed(
    stack: DevStack, client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    first, second, third = ids(), ids(), ids()
    await deliver(client, stack, created_in_hubspot(first, ADA))
    twin = created_in_hubspot(second, {**ADA, "email": ADA["email"].upper(), "phone": "(415) 555-0199"})
    twin_ids = await deliver(client, stack, twin)
    [merge] = await eventually(
        lambda: merges_naming(client, stack, second), lambda q: len(q) == 1, what="merge waiting for review"
    )
    assert {merge["record_id"], *merge["other_record_ids"]} == {
        str(first),
        str(second),
    }

    # HubSpot delivers the twin's batch again (a retry): the same events, acted on once.
    detector = f"http://127.0.0.1:{stack.ports['detector']}/metrics"
    duplicates_before = detector_duplicates((await client.get(detector)).text)
    assert await deliver(client, stack, [{**e, "attemptNumber": 1} for e in twin]) == twin_ids
    await eventually(
        lambda: client.get(detector),
        lambda r: detector_duplicates(r.text) >= duplicates_before + len(twin),
        what="the detector recognising the redelivered events",
    )
    assert [i["proposal_id"] for i in await merges_naming(client, stack, second)] == [merge["proposal_id"]]

    # Someone merges the twin into the first record in HubSpot itself.
    merged = {
        "eventId": ids(),
        "portalId": 62515,
        "occurredAt": int(time.time() * 1000),
        "subscriptionType": "contact.merge",
        "attemptNumber": 0,
        "objectId": first,
        "changeSource": "CRM_UI",
        "sourceId": "userId:7",
        "primaryObjectId": first,
        "mergedObjectIds": [second],
        "numberOfPropertiesMoved": 3,
    }
    await deliver(client, stack, [merged])

    async def twin_state() -> bool | None:
        deleted: bool | None = await db.fetchval(
            "SELECT deleted FROM detector_records WHERE object_type = 'contact' AND record_id = $1",
            str(second),
        )
        return deleted

    await eventually(twin_state, lambda deleted: deleted is True, what="the merged-away record forgotten")
    # A third copy of the same person: matched to the survivor alone, the merged-away record is gone.
    await deliver(client, stack, created_in_hubspot(third, ADA))
    [after] = await eventually(
        lambda: merges_naming(client, stack, third), lambda q: len(q) == 1, what="merge of the third copy"
    )
    assert {after["record_id"], *after["other_record_ids"]} == {
        str(first),
        str(third),
    }
