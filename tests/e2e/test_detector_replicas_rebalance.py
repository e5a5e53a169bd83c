"""Three detector replicas, and a rebalance while CRM events stream in, find the same duplicates as a
single replica fed the same events: nothing lost (every event processed, every record known to
every replica), nothing proposed twice (each cluster proposed once, under one proposal id)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from changegate.cli.devstack import DevStack
from changegate.cli.embedded import free_port
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.envelope import make_envelope
from changegate.core.kafka import make_producer
from changegate.core.serde import decode, encode
from changegate.core.topics import Topic, TopicNames
from helpers import eventually, running_stack

pytestmark = pytest.mark.e2e

FIRST = ["Annabel", "Bartholomew", "Cordelia", "Desmond", "Evangeline", "Fitzgerald", "Georgiana", "Horatio"]
LAST = ["Quartermaine", "Whitcombe", "Fairweather", "Ashbourne", "Ravensworth", "Pemberton", "Lockhart"]


def _people() -> list[tuple[str, dict[str, Any]]]:
    """Distinct people, and for most of them a second record of the same person (another phone
    format, the name in lower case): the duplicates to find."""
    records = []
    for i, (first, last) in enumerate((f, s) for f in FIRST for s in LAST):
        person = {
            "firstname": first,
            "lastname": last,
            "email": f"{first.lower()}.{last.lower()}@firm{i}.example",
            "phone": f"+1 415 555 {1000 + i:04d}",
            "company": f"{last} & {first} Holdings {i}",
            "city": "San Francisco",
        }
        records.append((f"p{i}-a", person))
        if i % 4 != 3:
            twin = person | {"firstname": first.lower(), "phone": f"(415) 555-{1000 + i:04d}"}
            records.append((f"p{i}-b", twin))
    return records


def _event(record_id: str, props: dict[str, Any]) -> bytes:
    event = CrmEvent(
        source_system="hubspot",
        source_event_id=f"created-{record_id}",
        object_type=ObjectType.CONTACT,
        record_id=record_id,
        kind=CrmEventKind.RECORD_CREATED,
        properties=props,
    )
    return encode(make_envelope(event, service="e2e"))


def _replica(stack: DevStack, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = stack.env("detector") | {"CHANGEGATE_HTTP_PORT": str(port)}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "changegate.detector"], env=env, stdout=out, stderr=out
        )
    return proc, port


async def _ready(port: int) -> None:
    async def answer() -> int:
        async with httpx.AsyncClient(timeout=2) as client:
            try:
                return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code
            except httpx.HTTPError:
                return 0

    await eventually(answer, lambda s: s == 200, timeout=90, what=f"replica on {port} ready")


async def _position(port: int) -> float:
    async with httpx.AsyncClient(timeout=2) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    match = re.search(r"^changegate_detector_changelog_position (\S+)$", text, re.M)
    return float(match[1]) if match else -1.0


async def _changelog_end(stack: DevStack) -> int:
    tp = TopicPartition(TopicNames(stack.topic_prefix)(Topic.RECORD_CHANGES), 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka, fetch_max_wait_ms=15)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        while consumer.highwater(tp) is None:
            await consumer.getmany(tp, timeout_ms=500)
        end: int = consumer.highwater(tp)
        return end
    finally:
        await consumer.stop()


async def _feed_and_settle(stack: DevStack, replicas: int, rebalance: bool, logs: Path) -> dict[str, Any]:
    """Feed every record (with ``rebalance``: another replica joins half-way), wait until every
    event is processed and every replica has read the whole changelog; what was proposed."""
    records = _people()
    procs = [_replica(stack, logs / f"replica{n}.log") for n in range(replicas - 1)]
    ports = [stack.ports["detector"], *(port for _, port in procs)]
    try:
        for _, port in procs:
            await _ready(port)
        producer = make_producer(stack.settings(), "e2e")
        await producer.start()
        topic = TopicNames(stack.topic_prefix)(Topic.CRM_EVENTS)
        try:
            half = len(records) // 2
            for n, (record_id, props) in enumerate(records):
                if rebalance and n == half:  # a replica joins under load: partitions move
                    joining = _replica(stack, logs / "joining.log")
                    procs.append(joining)
                    ports.append(joining[1])
                await producer.send(topic, _event(record_id, props), key=record_id.encode())
                if not record_id.endswith("-a"):  # a pair's two records go out together
                    await asyncio.sleep(0.02)
            await producer.flush()
        finally:
            await producer.stop()
        for _, port in procs:
            await _ready(port)
        db = await asyncpg.connect(stack.settings().database_url)
        try:

            async def processed() -> int:
                n: int = await db.fetchval(
                    "SELECT count(*) FROM changegate_processed_events WHERE consumer = 'detector'"
                )
                return n

            await eventually(
                processed, lambda n: n == len(records), timeout=120, what="every event processed"
            )
            # The outbox drained (changelog and proposals out), every replica through the changelog.
            await eventually(
                lambda: db.fetchval("SELECT count(*) FROM changegate_outbox WHERE service = 'detector'"),
                lambda n: n == 0,
                timeout=60,
                what="the detector's outbox drained",
            )
            end = await _changelog_end(stack)
            for port in ports:
                await eventually(
                    partial(_position, port), lambda pos: pos >= end, timeout=60, what="changelog read"
                )
            await eventually(
                lambda: db.fetchval("SELECT count(*) FROM changegate_outbox WHERE service = 'detector'"),
                lambda n: n == 0,
                timeout=60,
                what="late proposals out",
            )
            open_merges = {
                frozenset(r["members"]) for r in await db.fetch("SELECT members FROM detector_open_merges")
            }
            known = await db.fetchval("SELECT count(*) FROM detector_records WHERE NOT deleted")
            late = await db.fetchval(
                "SELECT count(*) FROM changegate_processed_events WHERE consumer = 'detector-late'"
            )
        finally:
            await db.close()
        merges = await _merge_proposals(stack)
        return {
            "open": open_merges,
            "known": known,
            "proposals": merges,
            "records": len(records),
            "late": late,
        }
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(30)


async def _merge_proposals(stack: DevStack) -> list[tuple[str, frozenset[str]]]:
    consumer = AIOKafkaConsumer(
        TopicNames(stack.topic_prefix)(Topic.PROPOSALS),
        bootstrap_servers=stack.kafka,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=15,
    )
    await consumer.start()
    out: list[tuple[str, frozenset[str]]] = []
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            if not batch and out:
                break
            for records in batch.values():
                for r in records:
                    proposal = decode(r.value).payload
                    if proposal.kind.value == "merge":
                        out.append(
                            (
                                str(proposal.proposal_id),
                                frozenset([proposal.record_id, *proposal.other_record_ids]),
                            )
                        )
    finally:
        await consumer.stop()
    return out


def test_three_replicas_and_a_rebalance_find_what_one_replica_finds(
    kafka_bootstrap: str, database_url: str, tmp_path: Path
) -> None:
    results = {}
    for replicas, rebalance in ((1, False), (3, True)):
        with running_stack(kafka_bootstrap, database_url) as stack:
            results[replicas] = asyncio.run(_feed_and_settle(stack, replicas, rebalance, tmp_path))
    one, three = results[1], results[3]
    pairs = sum(1 for i in range(len(FIRST) * len(LAST)) if i % 4 != 3)
    print(f"late checks that proposed: one replica {one['late']}, three replicas {three['late']}")
    assert len(one["open"]) == pairs  # the single replica finds every pair (the yardstick holds)
    assert three["open"] == one["open"]  # the same clusters, across replicas and a rebalance
    assert three["known"] == one["known"] == three["records"]  # nothing lost
    for result in (one, three):
        ids = Counter(pid for pid, _ in result["proposals"])
        assert max(ids.values()) == 1, "a proposal sent twice"
        # Every cluster proposed is proposed under one id (no second proposal of the same records).
        clusters = Counter(members for _, members in result["proposals"])
        assert max(clusters.values()) == 1, [c for c, n in clusters.items() if n > 1]
