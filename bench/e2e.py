"""End to end: events/s from ``crm.events`` to the audit row, and latency inbound -> executed ->
audited, beside a raw aiokafka consume->produce chain with the same number of hops (crm.events ->
detector -> proposals -> policy -> decisions -> executor -> executions -> audit: four) measured in
the same run, on the same broker.

The stack is the real one: every service as its own process and its own database role (what
`changegate dev up` starts), on the embedded Tansu broker and PostgreSQL (started here), or on a
broker and a PostgreSQL you give (a database of its own is created there). Services log at INFO,
as in production. The sandbox CRM is seeded with a contact per event; the feed is Clay enrichments
on `crm.events`: most fill an empty job title (auto-applied by rule `enrichment-fill-empty`), a
share overwrite one the detector knows (reviewed: a bench reviewer approves each through the
review API as it appears). Every event ends in an audit row.

Phases: fixed offered rates (default 100 and 1,000 events/s), flat out (every event sent at once),
then the highest sustainable rate (a fixed rate just under the flat-out rate, checked to keep up).
The raw chain runs the same phases with the same bytes before the stack starts (so neither competes
with the other). Figures per phase: achieved events/s, latency percentiles, CPU per event of every
process of ours (services or chain, broker, PostgreSQL) and PostgreSQL transactions per event.

    .venv/bin/python bench/e2e.py [--rates 100,1000] [--duration 10] [--flat-count 10000]
                                  [--review-share 0.05] [--kafka HOST:PORT --database-url DSN]
                                  [--profile DIR]   # py-spy each service per phase (py-spy is in the lock)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import code_env, start, stop
from changegate.cli.devstack import DEFAULT_PORTS, DevStack
from changegate.cli.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from changegate.core.auth.principal import Role
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.envelope import make_envelope
from changegate.core.db import create_pool
from changegate.core.logging import configure_logging
from changegate.core.serde import encode
from changegate.core.topics import TOPICS, Topic, TopicNames

HERE = Path(__file__).resolve().parent
REVIEWER = "bench-reviewer@changegate.local"
HOPS = 4
POLL_SECONDS = 0.01  # how often the audit table is read for new rows (the audited time's resolution)
BENCH_PROBE = "bench probe"  # the PostgreSQL backends of the bench's own probe: shown, not counted


# -- what is measured ------------------------------------------------------------------------------


@dataclass
class Event:
    event_id: str  # the CrmEvent's source_event_id: what the proposal, execution and audit row carry
    key: bytes
    value: bytes
    reviewed: bool
    sent: float = 0.0
    executed: float = 0.0
    approved: float = 0.0
    audited: float = 0.0
    # Per hop: when a service's handler made its message (the envelope's occurred_at, inside the
    # batch's transaction) and when its outbox relay sent it (the record's timestamp), by topic.
    made: dict[str, float] = field(default_factory=dict)
    relayed: dict[str, float] = field(default_factory=dict)


@dataclass
class PhaseResult:
    name: str
    offered: float | None  # events/s; None: flat out
    events: int
    completed: int
    elapsed: float  # first sent -> last completed
    latencies: dict[str, list[float]] = field(default_factory=dict)  # seconds
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process group
    transactions: int = 0

    @property
    def achieved(self) -> float:
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def cpu_seconds(self) -> float:
        """Of the stack (or chain) and its broker and PostgreSQL; not of the bench's own probe."""
        return sum(v for group, v in self.cpu.items() if group != BENCH_PROBE)

    @property
    def kept_up(self) -> bool:
        return self.completed == self.events


# The per-hop split of an auto-applied event: (stage, from, to), each a (kind, topic) point.
HOP_STAGES = [
    ("detector", ("sent", ""), ("made", "proposals")),
    ("detector relay", ("made", "proposals"), ("relayed", "proposals")),
    ("policy", ("relayed", "proposals"), ("made", "decisions")),
    ("policy relay", ("made", "decisions"), ("relayed", "decisions")),
    ("executor", ("relayed", "decisions"), ("made", "executions")),
    ("executor relay", ("made", "executions"), ("relayed", "executions")),
    ("audit", ("relayed", "executions"), ("audited", "")),
]


def _at(event: Event, point: tuple[str, str]) -> float | None:
    kind, topic = point
    if kind in ("made", "relayed"):
        return (event.made if kind == "made" else event.relayed).get(topic)
    return float(getattr(event, kind)) or None


def hop_latencies(events: list[Event]) -> dict[str, list[float]]:
    """Where an auto-applied event's time goes: a service's wait and handling (from the message it
    consumes reaching the broker to the handler making its own), and its relay (from then to the
    message reaching the broker: the rest of the batch, the commit and the outbox relay)."""
    out: dict[str, list[float]] = {}
    for stage, begin, end in HOP_STAGES:
        spans = [(_at(e, begin), _at(e, end)) for e in events]
        out[f"hop {stage}"] = [b - a for a, b in spans if a is not None and b is not None]
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class CpuMeter:
    """CPU seconds (user + system) of the processes that do the work, by group (each service or
    passthrough hop by name, the broker, PostgreSQL: the postmaster and its backends)."""

    def __init__(self, groups: Callable[[], dict[str, list[int]]]) -> None:
        self.groups = groups
        self.seen: dict[int, float] = {}

    def _sample(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for group, pids in self.groups().items():
            times = out.setdefault(group, {})
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    t = psutil.Process(pid).cpu_times()
                    times[pid] = t.user + t.system
        return out

    def start(self) -> None:
        self.seen = {pid: v for times in self._sample().values() for pid, v in times.items()}

    def stop(self) -> dict[str, float]:
        """CPU seconds per group since ``start`` (a process started since counts in full; one that
        ended since is not counted: PostgreSQL's backends live as long as the pools)."""
        return {
            group: sum(v - self.seen.get(pid, 0.0) for pid, v in times.items())
            for group, times in self._sample().items()
        }


def postgres_pids(database_url: str, pgdata: Path | None) -> list[int]:
    """The postmaster and its children (backends, WAL writer, checkpointer…), if it runs here."""
    if pgdata is None or not (pgdata / "postmaster.pid").exists():
        return []
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        master = int((pgdata / "postmaster.pid").read_text().split()[0])
        return [master, *(c.pid for c in psutil.Process(master).children(recursive=True))]
    return []


async def transactions(conn: asyncpg.Connection) -> int:
    n: int = await conn.fetchval("SELECT sum(xact_commit + xact_rollback)::bigint FROM pg_stat_database")
    return n


# -- feeding ---------------------------------------------------------------------------------------


async def send(producer: AIOKafkaProducer, topic: str, events: list[Event], rate: float | None) -> None:
    """At ``rate`` events/s (in 5 ms steps), or all at once; every send acknowledged at the end."""
    started = time.perf_counter()
    futures = []
    sent = 0
    while sent < len(events):
        due = (
            len(events) if rate is None else min(len(events), int((time.perf_counter() - started) * rate) + 1)
        )
        while sent < due:
            event = events[sent]
            event.sent = time.time()
            futures.append(await producer.send(topic, event.value, key=event.key))
            sent += 1
        if rate is not None:
            await asyncio.sleep(0.005)
    await asyncio.gather(*futures)


async def wait_for(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def all_audited(events: list[Event]) -> bool:
    return all(e.audited for e in events)


def all_in(events: list[Event], arrived: dict[bytes, float]) -> bool:
    return all(e.key in arrived for e in events)


def slug(name: str) -> str:
    return name.replace("/", "").replace(" ", "").replace(",", "").replace(".", "")


def phases(rates: list[float]) -> list[tuple[str, float | None]]:
    return [(f"{r:,.0f}/s", r) for r in rates] + [("flat out", None)]


# -- the raw chain: the baseline -------------------------------------------------------------------


async def raw_chain(
    bootstrap: str,
    workdir: Path,
    payloads: list[tuple[bytes, bytes]],
    plan: list[tuple[str, float | None, int]],
    drain_timeout: float,
    broker_pid: int | None,
) -> list[PhaseResult]:
    prefix = f"raw{uuid.uuid4().hex[:6]}."
    topics = [f"{prefix}hop{i}" for i in range(HOPS + 1)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    partitions = TOPICS[Topic.CRM_EVENTS].partitions
    await admin.create_topics([NewTopic(t, partitions, 1) for t in topics])
    await admin.close()
    procs = [
        start(
            [
                sys.executable,
                str(HERE / "_passthrough.py"),
                bootstrap,
                topics[i],
                topics[i + 1],
                f"{prefix}g{i}",
            ],
            dict(os.environ),
            workdir / f"passthrough{i}.log",
        )
        for i in range(HOPS)
    ]
    arrived: dict[bytes, float] = {}
    sink = AIOKafkaConsumer(
        topics[-1],
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=15,
        max_poll_records=5000,
    )
    await sink.start()
    stopping = asyncio.Event()

    async def collect() -> None:
        while not stopping.is_set():
            batch = await sink.getmany(timeout_ms=100)
            now = time.time()
            for records in batch.values():
                for r in records:
                    arrived[r.key] = now

    collector = asyncio.create_task(collect())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    cpu = CpuMeter(
        lambda: {
            **{f"hop{i}": [p.pid] for i, p in enumerate(procs)},
            **({"broker": [broker_pid]} if broker_pid else {}),
        }
    )
    results = []
    offset = 0
    try:
        # Warm up: every hop has joined its group and forwards.
        warm = [Event(f"w{i}", f"w{i}".encode(), b"{}", False) for i in range(10)]
        await send(producer, topics[0], warm, None)
        await wait_for(lambda: all(e.key in arrived for e in warm), 120)
        for name, rate, count in plan:
            events = [
                Event(
                    f"r{offset + i}",
                    f"r{offset + i}".encode(),
                    payloads[(offset + i) % len(payloads)][1],
                    False,
                )
                for i in range(count)
            ]
            offset += count
            cpu.start()
            await send(producer, topics[0], events, rate)
            await wait_for(partial(all_in, events, arrived), drain_timeout)
            done = [e for e in events if e.key in arrived]
            for e in done:
                e.audited = arrived[e.key]
            result = PhaseResult(
                name,
                rate,
                len(events),
                len(done),
                max((e.audited for e in done), default=0.0) - min(e.sent for e in events),
                {"in->out": [e.audited - e.sent for e in done]},
                cpu.stop(),
            )
            results.append(result)
            print(f"  raw chain, {name}: {result.achieved:,.0f} messages/s", flush=True)
    finally:
        stopping.set()
        await collector
        await sink.stop()
        await producer.stop()
        for p in procs:
            stop(p)
    return results


# -- the stack -------------------------------------------------------------------------------------


class Probe:
    """Follows events to their execution (the executions topic), approval (the review API) and
    audit row (audit_entries, read every POLL_SECONDS)."""

    def __init__(self, stack: DevStack, owner_dsn: str) -> None:
        self.stack = stack
        self.owner_dsn = owner_dsn
        self.events: dict[str, Event] = {}
        self.stopping = asyncio.Event()
        self.polls = 0
        self.backends: set[int] = set()  # its PostgreSQL server processes

    async def run(self) -> None:
        await asyncio.gather(self._audit(), self._executions(), self._approve())

    async def _audit(self) -> None:
        conn = await asyncpg.connect(self.owner_dsn)
        self.backends.add(conn.get_server_pid())
        last = 0
        try:
            while not self.stopping.is_set():
                rows = await conn.fetch(
                    "SELECT seq, source_event_id FROM audit_entries WHERE seq > $1 ORDER BY seq LIMIT 20000",
                    last,
                )
                self.polls += 1
                now = time.time()
                for row in rows:
                    event = self.events.get(row["source_event_id"])
                    if event is not None and not event.audited:
                        event.audited = now
                if rows:
                    last = rows[-1]["seq"]
                else:
                    await asyncio.sleep(POLL_SECONDS)
        finally:
            await conn.close()

    async def _executions(self) -> None:
        """Proposals, decisions and executions as they reach their topics: when each was made and
        relayed (the per-hop split), and when each event's change was executed."""
        names = TopicNames(self.stack.topic_prefix)
        hops = {names(t): t.value for t in (Topic.PROPOSALS, Topic.DECISIONS, Topic.EXECUTIONS)}
        consumer = AIOKafkaConsumer(
            *hops,
            bootstrap_servers=self.stack.kafka,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=15,
            max_poll_records=5000,
        )
        await consumer.start()
        try:
            while not self.stopping.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                for records in batch.values():
                    for r in records:
                        envelope = json.loads(r.value)
                        payload, hop = envelope["payload"], hops[r.topic]
                        proposal = (
                            payload
                            if hop == "proposals"
                            else payload.get("proposal") or payload.get("decision", {}).get("proposal")
                        )
                        if not isinstance(proposal, dict):
                            continue
                        event = self.events.get(proposal["source"]["event_id"])
                        if event is None:
                            continue
                        if hop == "decisions" and payload.get("outcome") not in ("auto_approved", None):
                            continue  # a human's approval or a supersession: not the auto-applied hop
                        event.made.setdefault(
                            hop, datetime.fromisoformat(envelope["occurred_at"]).timestamp()
                        )
                        event.relayed.setdefault(hop, r.timestamp / 1000)
                        if hop == "executions" and payload["status"] == "applied":
                            event.executed = datetime.fromisoformat(payload["executed_at"]).timestamp()
        finally:
            await consumer.stop()

    async def _approve(self) -> None:
        """A reviewer approving every bench proposal waiting for review, eight at a time."""
        url = f"http://127.0.0.1:{self.stack.ports['review-api']}/v1/proposals"
        headers = {"Authorization": f"Bearer {self.stack.issued[REVIEWER]}"}
        submitted: set[str] = set()
        gate = asyncio.Semaphore(8)
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:

            async def approve(pid: str, event: Event) -> None:
                async with gate:
                    try:
                        response = await client.post(f"{url}/{pid}/approve", json={"comment": "bench"})
                    except httpx.HTTPError as exc:  # e.g. a timeout on a loaded machine: try again
                        print(f"  approval not answered ({exc!r}), retrying", flush=True)
                        submitted.discard(pid)
                        return
                    if response.status_code == 200:
                        event.approved = time.time()
                    else:
                        print(f"  approval refused: {response.status_code} {response.text[:200]}", flush=True)

            params: dict[str, Any] = {"limit": 200, "kind": "field_update"}
            while not self.stopping.is_set():
                try:
                    response = await client.get(url, params=params)
                except httpx.HTTPError as exc:
                    print(f"  review queue not answered ({exc!r}), retrying", flush=True)
                    await asyncio.sleep(0.5)
                    continue
                page = response.json() if response.status_code == 200 else {"items": [], "next_cursor": None}
                # A bench record has one event (its key is the record id).
                by_record = {e.key.decode(): e for e in self.events.values() if e.reviewed}
                todo = []
                for item in page["items"]:
                    event = by_record.get(item["record_id"])
                    if event is not None and item["proposal_id"] not in submitted:
                        submitted.add(item["proposal_id"])
                        todo.append(approve(item["proposal_id"], event))
                params.pop("cursor", None)
                if page["next_cursor"] is not None:
                    params["cursor"] = page["next_cursor"]
                if todo:
                    await asyncio.gather(*todo)
                else:
                    await asyncio.sleep(0.05)


def enrichment(record_id: str, event_id: str, title: str) -> CrmEvent:
    return CrmEvent(
        source_system="clay",
        source_event_id=event_id,
        object_type=ObjectType.CONTACT,
        record_id=record_id,
        kind=CrmEventKind.ENRICHMENT_RESULT,
        properties={"jobtitle": title},
        # A source confident enough for the default policy's auto-apply rules (0.98 since policy
        # 2026-12-04.1); at 0.93 every enrichment waited for a reviewer who never came.
        confidence=0.99,
    )


def make_events(phase: str, count: int, review_share: float) -> tuple[list[Event], list[CrmEvent]]:
    """The phase's enrichments, and the record_created events that make the reviewed ones known."""
    every = round(1 / review_share) if review_share > 0 else 0
    events, known = [], []
    for i in range(count):
        rid = f"bench-{phase}-{i}"
        reviewed = bool(every) and i % every == every - 1
        event = enrichment(rid, f"clay-{rid}", "CTO" if reviewed else "VP Engineering")
        env = make_envelope(event, service="bench")
        events.append(Event(event.source_event_id, rid.encode(), encode(env), reviewed))
        if reviewed:
            known.append(
                CrmEvent(
                    source_system="hubspot",
                    source_event_id=f"hs-created-{rid}",
                    object_type=ObjectType.CONTACT,
                    record_id=rid,
                    kind=CrmEventKind.RECORD_CREATED,
                    properties={"jobtitle": "Engineer"},
                )
            )
    return events, known


async def seed(pool: asyncpg.Pool, events: list[Event]) -> None:
    """A sandbox contact per event: an empty job title (auto-applied fill) or one set (reviewed)."""
    await pool.copy_records_to_table(
        "sandbox_crm_records",
        columns=("object_type", "record_id", "properties"),
        records=[("contact", e.key.decode(), {"jobtitle": "Engineer" if e.reviewed else ""}) for e in events],
    )


async def publish_known(
    producer: AIOKafkaProducer, names: TopicNames, pool: asyncpg.Pool, known: list[CrmEvent]
) -> None:
    """The record_created events of reviewed records, and wait until the detector holds them."""
    topic = names(Topic.CRM_EVENTS)
    futures = [
        await producer.send(topic, encode(make_envelope(k, service="bench")), key=k.record_id.encode())
        for k in known
    ]
    await asyncio.gather(*futures)
    deadline = time.monotonic() + 600
    ids = [k.record_id for k in known]
    while await pool.fetchval("SELECT count(*) FROM detector_records WHERE record_id = ANY($1)", ids) < len(
        ids
    ):
        if time.monotonic() > deadline:
            raise TimeoutError("the detector did not learn the seeded records in 10 minutes")
        await asyncio.sleep(0.2)


async def run_stack_phases(
    stack: DevStack,
    owner_dsn: str,
    plan: list[tuple[str, float | None, int]],
    args: argparse.Namespace,
    pids: Callable[[], dict[str, list[int]]],
) -> list[PhaseResult]:
    names = TopicNames(stack.topic_prefix)
    pool = await create_pool(owner_dsn, max_size=2)
    stats = await asyncpg.connect(owner_dsn)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka, acks="all", linger_ms=2)
    await producer.start()
    probe = Probe(stack, owner_dsn)
    probing = asyncio.create_task(probe.run())
    probe.backends.add(stats.get_server_pid())

    def groups() -> dict[str, list[int]]:
        """The stack's groups, with the backends of the bench's probe apart from PostgreSQL's."""
        out = pids()
        if "postgres" in out:
            out["postgres"] = [p for p in out["postgres"] if p not in probe.backends]
            out[BENCH_PROBE] = sorted(probe.backends)
        return out

    cpu = CpuMeter(groups)
    results = []
    try:
        planned = {name: make_events(slug(name), count, args.review_share) for name, _, count in plan}
        print("  seeding the sandbox CRM and the detector's view of the reviewed records", flush=True)
        for events, known in planned.values():
            await seed(pool, events)
            await publish_known(producer, names, pool, known)

        async def phase(name: str, rate: float | None, events: list[Event]) -> PhaseResult:
            for e in events:
                probe.events[e.event_id] = e
            await asyncio.sleep(1)  # let the previous phase's stats settle
            polls, xacts = probe.polls, await transactions(stats)
            cpu.start()
            with profiling(stack, args.profile / slug(name) if args.profile else None):
                await send(producer, names(Topic.CRM_EVENTS), events, rate)
                await wait_for(partial(all_audited, events), args.drain_timeout)
            cpu_by_group = cpu.stop()
            await asyncio.sleep(1.0)  # PostgreSQL's statistics are flushed about every second
            xacts = await transactions(stats) - xacts - (probe.polls - polls)
            done = [e for e in events if e.audited]
            auto = [e for e in done if not e.reviewed]
            reviewed = [e for e in done if e.reviewed and e.approved]
            result = PhaseResult(
                name,
                rate,
                len(events),
                len(done),
                max((e.audited for e in done), default=0.0) - min(e.sent for e in events),
                {
                    "in->executed": [e.executed - e.sent for e in auto if e.executed],
                    "in->audited": [e.audited - e.sent for e in auto],
                    "executed->audited": [e.audited - e.executed for e in auto if e.executed],
                    "approved->audited": [e.audited - e.approved for e in reviewed],
                    **hop_latencies(auto),
                },
                cpu_by_group,
                xacts,
            )
            print(
                f"  stack, {name}: {result.achieved:,.0f} events/s, {result.completed}/{len(events)} audited,"
                f" p99 in->audited {pct(result.latencies['in->audited'], 0.99) * 1000:,.0f} ms",
                flush=True,
            )
            if not result.kept_up:
                print(f"  waiting for the backlog of {name} to drain before the next phase", flush=True)
                await wait_for(partial(all_audited, events), 1800)
            return result

        for name, rate, _ in plan:
            results.append(await phase(name, rate, planned[name][0]))
        # The highest sustainable rate: a fixed rate under the flat-out one that keeps up (every
        # event audited within a second or 10% of the phase after the last send).
        flat = next(r for r in results if r.offered is None)
        for share in (0.9, 0.75, 0.6, 0.45, 0.3) if args.sustained else ():
            rate = max(1.0, round(flat.achieved * share, -1 if flat.achieved > 100 else 0))
            name = f"sust. {rate:,.0f}/s"
            events, known = make_events(f"s{len(results)}", int(rate * args.duration), args.review_share)
            await seed(pool, events)
            await publish_known(producer, names, pool, known)
            result = await phase(name, rate, events)
            results.append(result)
            last_send = max(e.sent for e in events)
            if result.kept_up and max(e.audited for e in events) - last_send <= max(1.0, 0.1 * args.duration):
                break
            print(f"  {rate:,.0f}/s is not sustained", flush=True)
    finally:
        probe.stopping.set()
        with contextlib.suppress(Exception):
            await probing
        await producer.stop()
        await stats.close()
        await pool.close()
    return results


async def create_database(database_url: str) -> str:
    name = f"bench_e2e_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    head, _, query = database_url.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


@contextlib.contextmanager
def profiling(stack: DevStack, out: Path | None) -> Any:
    """py-spy each service while the block runs (a speedscope file and raw folded stacks per
    service); py-spy writes its output when interrupted, so the profile covers exactly the block."""
    if out is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    procs = [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(s.proc.pid),
                "--rate",
                "100",
                "--format",
                fmt,
                "--output",
                str(out / f"{name}.{ext}"),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, s in stack.services.items()
        if name != "ingest"  # the bench feeds crm.events directly
        for fmt, ext in (("speedscope", "json"), ("raw", "txt"))
    ]
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


# -- report ----------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
    for i, row in enumerate([header, *rows]):
        print(
            " | ".join(
                c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0:
            print("-+-".join("-" * w for w in widths))


def ms3(values: list[float]) -> str:
    """p50 / p99 / max in milliseconds."""
    if not values:
        return "-"
    return " / ".join(f"{v * 1000:,.0f}" for v in (pct(values, 0.5), pct(values, 0.99), max(values)))


def ms2(values: list[float]) -> str:
    """p50 / p99 in milliseconds."""
    if not values:
        return "-"
    return " / ".join(f"{v * 1000:,.0f}" for v in (pct(values, 0.5), pct(values, 0.99)))


def side_by_side(
    raw_by_name: dict[str, PhaseResult], e2e: list[PhaseResult]
) -> Iterator[tuple[str, PhaseResult, int]]:
    """Each phase's raw chain (when it ran) then the stack: (chain, result, completed events, >= 1)."""
    for s in e2e:
        pairs = [("raw chain", raw_by_name[s.name])] if s.name in raw_by_name else []
        for chain, x in [*pairs, ("stack", s)]:
            yield chain, x, max(x.completed, 1)


def cpu_table(raw_by_name: dict[str, PhaseResult], e2e: list[PhaseResult]) -> None:
    """CPU ms per completed event by process group, and what the broker and PostgreSQL alone cost:
    the floor the rest of the stack cannot go under, hence the best rate these cores allow."""
    groups: list[str] = []
    for x in [*raw_by_name.values(), *e2e]:
        groups += [g for g in x.cpu if g not in groups]
    rows = [
        [
            x.name,
            chain,
            *(f"{x.cpu[g] / per * 1000:.2f}" if g in x.cpu else "" for g in groups),
            f"{x.cpu_seconds / per * 1000:.2f}",
        ]
        for chain, x, per in side_by_side(raw_by_name, e2e)
    ]
    print()
    print(f"CPU ms per event by process group ({BENCH_PROBE}: the bench reading the audit log; not in total)")
    table(["phase", "chain", *groups, "total"], rows)
    cores = os.cpu_count() or 1
    # Only where the stack is saturated: at a rate it keeps up with, idle polling is in the figure.
    for s in [x for x in e2e if x.offered is None or x.achieved < 0.9 * x.offered]:
        floor = (s.cpu.get("broker", 0.0) + s.cpu.get("postgres", 0.0)) / max(s.completed, 1)
        if floor > 0:
            print(
                f"{s.name}: broker + PostgreSQL alone {floor * 1000:.2f} ms/event: at most "
                f"{cores / floor:,.0f} events/s on {cores} cores were nothing else running"
            )


def report(raw: list[PhaseResult], e2e: list[PhaseResult]) -> None:
    raw_by_name = {r.name: r for r in raw}
    rows = [
        [
            x.name,
            chain,
            f"{x.achieved:,.0f}",
            f"{x.completed}/{x.events}",
            f"{x.cpu_seconds / per * 1000:.2f}",
            f"{x.transactions / per:.1f}" if chain == "stack" else "",
        ]
        for chain, x, per in side_by_side(raw_by_name, e2e)
    ]
    print()
    table(["phase", "chain", "events/s", "done", "CPU ms/event", "PG xact/event"], rows)
    rows = []
    for s in e2e:
        if s.name in raw_by_name:
            rows.append([s.name, "raw chain", ms3(raw_by_name[s.name].latencies["in->out"]), "", "", ""])
        lat = s.latencies
        rows.append(
            [
                s.name,
                "stack",
                ms3(lat["in->audited"]),
                ms3(lat["in->executed"]),
                ms3(lat["executed->audited"]),
                ms3(lat["approved->audited"]),
            ]
        )
    print()
    print("latency, ms (p50 / p99 / max); auto-applied events, and reviewed ones from their approval")
    table(["phase", "chain", "in->audited", "in->executed", "executed->audited", "approved->audited"], rows)
    print()
    print("where an auto-applied event's time goes, ms (p50 / p99): each service's wait and handling,")
    print("then its outbox relay (rest of the batch, commit, relay) to the broker")
    stages = [stage for stage, _, _ in HOP_STAGES]
    table(
        ["phase", *stages],
        [[s.name, *(ms2(s.latencies.get(f"hop {stage}", [])) for stage in stages)] for s in e2e],
    )
    cpu_table(raw_by_name, e2e)
    flat_raw = next(r for r in raw if r.name == "flat out")
    flat = next(s for s in e2e if s.name == "flat out")
    ratio = flat.achieved / flat_raw.achieved if flat_raw.achieved else 0.0
    print()
    print(
        f"flat out: stack {flat.achieved:,.0f} events/s, raw {HOPS}-hop chain "
        f"{flat_raw.achieved:,.0f} messages/s: {ratio:.1%}"
    )
    targets = [
        ("end to end >= 25% of the raw chain (flat out)", ratio >= 0.25),
        ("end to end >= 2,000 events/s (flat out)", flat.achieved >= 2000),
    ]
    for s in e2e:
        p99 = pct(s.latencies["in->audited"], 0.99)
        if s.name.startswith("sust."):
            continue
        if s.offered == 100:
            targets.append(("p99 in->audited <= 200 ms at 100 events/s", s.kept_up and p99 <= 0.2))
        if s.offered == 1000:
            targets.append(("p99 in->audited <= 500 ms at 1,000 events/s", s.kept_up and p99 <= 0.5))
    for what, met in targets:
        print(f"target: {what}: {'met' if met else 'NOT met'}")


async def amain(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="changegate-bench-e2e-"))
    broker = postgres = None
    stack = None
    try:
        bootstrap = args.kafka
        if bootstrap is None:
            broker = EmbeddedBroker(free_port(), workdir / "broker.log")
            bootstrap = broker.start()
        database_url = args.database_url
        if database_url is None:
            postgres = EmbeddedPostgres(workdir / "pgdata")
            database_url = postgres.start()
        rates = [float(r) for r in args.rates.split(",") if r]
        plan = [(n, r, int(r * args.duration) if r else args.flat_count) for n, r in phases(rates)]
        sample = [(e.key, e.value) for e in make_events("sample", 100, 0)[0]]
        broker_pid = broker.proc.pid if broker and broker.proc else None
        print(f"raw {HOPS}-hop aiokafka chain (baseline)", flush=True)
        raw = await raw_chain(bootstrap, workdir, sample, plan, args.drain_timeout, broker_pid)

        owner_dsn = await create_database(database_url)
        stack = DevStack(
            workdir / "stack",
            ports={k: free_port() for k in DEFAULT_PORTS},
            topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
            kafka=bootstrap,
            database_url=owner_dsn,
            tokens={REVIEWER: Role.REVIEWER},
            extra_env={
                "CHANGEGATE_LOG_LEVEL": "INFO",
                "CHANGEGATE_LOG_FORMAT": "json",
                # one bench reviewer decides for a whole team: no per-person rate limit
                "CHANGEGATE_REVIEW_DECISION_RATE_LIMIT": "1000000/minute",
                **code_env(args.code),
            },
        )
        print("starting the stack", flush=True)
        await asyncio.to_thread(stack.start, 180)
        pgdata = Path(postgres.data_dir) if postgres else None

        def pids() -> dict[str, list[int]]:
            assert stack is not None
            return {
                **{name: [s.proc.pid] for name, s in stack.services.items()},
                **({"broker": [broker_pid]} if broker_pid else {}),
                **({"postgres": postgres_pids(database_url, pgdata)} if pgdata else {}),
            }

        # What the stack costs doing nothing (polling, heartbeats, housekeeping), per process group.
        idle = CpuMeter(pids)
        idle.start()
        await asyncio.sleep(args.idle_seconds)
        idle_cpu = idle.stop()
        idle_share = sum(idle_cpu.values()) / args.idle_seconds
        shares = ", ".join(f"{n} {v / args.idle_seconds:.0%}" for n, v in idle_cpu.items())
        print(f"  idle: {idle_share:.0%} of a core ({shares})", flush=True)
        print("end to end", flush=True)
        e2e = await run_stack_phases(stack, owner_dsn, plan, args, pids)
        print(
            f"\n{datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GB; review share {args.review_share:.0%}; "
            f"the machine may be shared (load average now {os.getloadavg()[0]:.1f})"
        )
        if args.code:
            print(f"services run from {args.code}")
        report(raw, e2e)
        print(f"idle stack: {idle_share:.0%} of a core ({shares})")
    finally:
        if stack is not None:
            await asyncio.to_thread(stack.stop)
        if broker is not None:
            broker.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    configure_logging("bench", "WARNING", "console")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="100,1000", help="fixed offered rates, events/s, comma-separated")
    parser.add_argument("--duration", type=float, default=10, help="seconds each fixed rate is offered")
    parser.add_argument(
        "--flat-count", type=int, default=10_000, help="events sent at once in the flat-out phase"
    )
    parser.add_argument(
        "--review-share", type=float, default=0.05, help="share of events that wait for a reviewer"
    )
    parser.add_argument(
        "--sustained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="search the highest sustainable rate after the flat-out phase",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=60, help="seconds a phase may take after its last send"
    )
    parser.add_argument("--idle-seconds", type=float, default=10, help="seconds the idle stack is measured")
    parser.add_argument("--kafka", help="a broker to use instead of starting the embedded one")
    parser.add_argument("--database-url", help="a PostgreSQL (owner DSN) to use instead of the embedded one")
    parser.add_argument(
        "--code", type=Path, help="run the services from this checkout (e.g. an export of main)"
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy every service during each phase into DIR/<phase>/"
    )
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
