"""Every service SIGKILLed (no shutdown, no commit) in the middle of its batches while enrichments
stream in, one service after the other: nothing is lost and nothing applied twice — every change
written to the CRM once, queued for review once, audited once."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from changegate.cli.devstack import DevStack
from changegate.core.contracts.envelope import make_envelope
from changegate.core.serde import encode
from changegate.core.topics import Topic, TopicNames
from helpers import created, enrichment, eventually

pytestmark = pytest.mark.e2e
AUTO, REVIEWED = 900, 60
KILLED = ("detector", "policy", "executor", "audit", "review-api")


async def _count(db: asyncpg.Pool, sql: str, *args: Any) -> int:
    n: int = await db.fetchval(sql, *args)
    return n


async def test_each_service_killed_mid_batch_under_load_loses_nothing_and_repeats_nothing(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    run = uuid.uuid4().hex[:6]
    auto = [f"k{run}-a{i}" for i in range(AUTO)]
    reviewed = [f"k{run}-r{i}" for i in range(REVIEWED)]
    topic = TopicNames(stack.topic_prefix)(Topic.CRM_EVENTS)
    await db.copy_records_to_table(
        "sandbox_crm_records",
        columns=("object_type", "record_id", "properties"),
        records=[("contact", r, {"jobtitle": ""}) for r in auto]
        + [("contact", r, {"jobtitle": "Engineer"}) for r in reviewed],
    )
    # The reviewed records are known to the detector with a job title (so an enrichment overwrites).
    for rid in reviewed:
        await producer.send(topic, _bytes(created(rid, jobtitle="Engineer")), key=rid.encode())
    await producer.flush()
    await eventually(
        lambda: _count(db, "SELECT count(*) FROM detector_records WHERE record_id = ANY($1)", reviewed),
        lambda n: n == REVIEWED,
        timeout=60,
        what="the reviewed records known",
    )

    async def feed() -> None:  # about 300 events/s
        events = [enrichment(r, jobtitle="VP Engineering") for r in auto] + [
            enrichment(r, jobtitle="CTO") for r in reviewed
        ]
        for n, event in enumerate(events):
            await producer.send(topic, _bytes(event), key=event.record_id.encode())
            if n % 30 == 29:
                await asyncio.sleep(0.1)
        await producer.flush()

    async def applied() -> int:
        return await _count(
            db,
            "SELECT count(*) FROM sandbox_crm_records"
            " WHERE record_id = ANY($1) AND properties->>'jobtitle' <> ''",
            auto,
        )

    feeding = asyncio.create_task(feed())
    done_before = 0
    for name in KILLED:
        # Mid-batch: while changes are flowing, each kill after more of them went through.
        done_before = await eventually(
            applied, _beyond(done_before), timeout=120, what=f"progress before {name}"
        )
        await asyncio.to_thread(stack.restart, name, signal.SIGKILL)
    await feeding

    await eventually(applied, lambda n: n == AUTO, timeout=180, what="every auto-applied change")
    # Each reviewed change queued once; approved, applied once.
    review = f"http://127.0.0.1:{stack.ports['review-api']}/v1/proposals"

    async def queued() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 200}
        while True:
            page = (await client.get(review, params=params)).json()
            items += [i for i in page["items"] if i["record_id"] in set(reviewed)]
            if page["next_cursor"] is None:
                return items
            params["cursor"] = page["next_cursor"]

    items = await eventually(
        queued, lambda q: len(q) == REVIEWED, timeout=120, what="every reviewed change queued"
    )
    for item in items:
        assert (
            await client.post(f"{review}/{item['proposal_id']}/approve", json={"comment": "ok"})
        ).status_code == 200
    everyone = auto + reviewed
    await eventually(
        lambda: _count(db, "SELECT count(*) FROM audit_entries WHERE record_id = ANY($1)", everyone),
        lambda n: n >= len(everyone),
        timeout=180,
        what="every change audited",
    )
    # Written once each (version 1 at seeding, 2 after the one write), audited once each, queued once.
    versions = await db.fetch(
        "SELECT version, count(*) AS n FROM sandbox_crm_records WHERE record_id = ANY($1) GROUP BY version",
        everyone,
    )
    assert {r["version"]: r["n"] for r in versions} == {2: len(everyone)}
    assert await _count(db, "SELECT count(*) FROM audit_entries WHERE record_id = ANY($1)", everyone) == len(
        everyone
    )
    assert await _count(
        db, "SELECT count(DISTINCT execution_id) FROM audit_entries WHERE record_id = ANY($1)", everyone
    ) == len(everyone)
    assert (
        await _count(db, "SELECT count(*) FROM review_queue WHERE record_id = ANY($1)", reviewed) == REVIEWED
    )
    assert await _count(
        db,
        "SELECT count(*) FROM executor_ledger l JOIN audit_entries a USING (decision_id)"
        " WHERE a.record_id = ANY($1)",
        everyone,
    ) == len(everyone)
    chain = await client.get(f"http://127.0.0.1:{stack.ports['audit']}/audit/verify")
    assert chain.json()["ok"], chain.json()["problems"]


def _beyond(count: int) -> Callable[[int], bool]:
    return lambda n: n > count


def _bytes(event: Any) -> bytes:
    return encode(make_envelope(event, service="e2e"))
