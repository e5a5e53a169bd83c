"""Executor speed: approved decisions/s carried out by the executor service, on the sandbox CRM and
on the HubSpot simulator (unlimited, and at HubSpot's private-app rate limit), next to a raw
aiokafka consume->produce pass-through of the same bytes measured in the same run (the baseline).

Each decision changes one field of one existing record; the executor verifies its signature,
records the intents of a batch in its ledger, reads, compares, writes, re-reads (HubSpot: batch
calls of 100 records), records the outcomes and emits signed executions through its outbox. At the
rate limit, the yardstick is the batched ideal: 190 requests / 10 s and three requests per 100
decisions (read, update, re-read) — and, measured in the same run, those same calls made straight
through the project's HubSpot client, 100 records a call. Target: >= 80% of the batched ideal.
Runs on the embedded stack (Tansu + PostgreSQL from the wheels) and the HubSpot simulator from
tests/ (HubSpot's OpenAPI documents from $CHANGEGATE_SPECS_DIR, else ../shared/specs), which it
starts and stops itself.

    .venv/bin/python bench/executor.py [--count 5000] [--limited-count 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _stack import SIGNING_KEYS, code_env, drain, preload, start, start_service, stop
from changegate.cli.embedded import EmbeddedBroker, EmbeddedPostgres, free_port, wait_for_port
from changegate.core import policy_versions
from changegate.core.contracts import (
    Decider,
    Decision,
    DecisionOutcome,
    FieldChange,
    ObjectType,
    Proposal,
    ProposalKind,
    ProposalSource,
    Trigger,
)
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.envelope import Envelope, make_envelope
from changegate.core.db import create_pool, migrate, migrate_core
from changegate.core.kafka import ensure_topics
from changegate.core.serde import decode, encode
from changegate.core.settings import CommonSettings
from changegate.core.signing import SigningKey
from changegate.core.topics import Topic, TopicNames
from changegate.executor.crm.hubspot.client import HubSpotClient
from changegate.hubspot_sim import TOKEN

HERE = Path(__file__).resolve().parent
POLICY_KEY = SigningKey.parse(SIGNING_KEYS["policy"], "policy")
DETECTOR_KEY = SigningKey.parse(SIGNING_KEYS["detector"], "detector")
POLICY_HASH = "0" * 64  # recorded as the policy service records what it loads (run_executor)
HUBSPOT_LIMIT = (190, 10.0)  # HubSpot's published private-app limit: requests per window (s)
CODE: Path | None = None  # --code: the executor of another checkout


@dataclass(frozen=True)
class Result:
    name: str
    count: int
    rate: float
    detail: str = ""


def decisions(prefix: str, count: int) -> list[tuple[bytes, bytes]]:
    """Auto-approved enrichment updates of records ``{prefix}-{i}`` (jobtitle: old -> new), signed
    by the policy service as the pipeline would."""
    out = []
    for i in range(count):
        record = f"{prefix}-{i}"
        changes = [FieldChange(field="jobtitle", previous="Engineer", proposed="Engineering Manager")]
        proposal = Proposal(
            proposal_id=uuid.uuid4(),
            kind=ProposalKind.FIELD_UPDATE,
            object_type=ObjectType.CONTACT,
            record_id=record,
            changes=changes,
            source=ProposalSource(
                system="clay",
                event_id=f"bench-{record}",
                detector="bench",
                detector_version="1",
                trigger=Trigger.RULE,
            ),
            confidence=0.97,
            rationale="bench",
            proposed_at=utcnow(),
        )
        decision = Decision(
            decision_id=uuid.uuid4(),
            proposal=DETECTOR_KEY.sign(proposal),
            outcome=DecisionOutcome.AUTO_APPROVED,
            decided_by=Decider(
                kind="policy",
                identity="policy:bench",
                policy_version="bench",
                policy_hash=POLICY_HASH,
                rule_id="bench-enrichment",
            ),
            decided_at=utcnow(),
            explanation="bench",
            final_changes=changes,
        )
        envelope = make_envelope(
            POLICY_KEY.sign(decision), service="policy", correlation_id=proposal.proposal_id
        )
        out.append((record.encode(), encode(envelope)))
    return out


async def _topics(bootstrap: str, prefix: str, extra: list[str]) -> CommonSettings:
    settings = CommonSettings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix)
    await ensure_topics(settings)
    if extra:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(t, 3, 1) for t in extra])
        await admin.close()
    return settings


async def passthrough(count: int, workdir: Path, bootstrap: str) -> Result:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    raw_in, raw_out = f"{prefix}raw.in", f"{prefix}raw.out"
    settings = await _topics(bootstrap, prefix, [raw_in, raw_out])
    await preload(settings, [raw_in], decisions("raw", count))
    proc = start(
        [sys.executable, str(HERE / "_passthrough.py"), bootstrap, raw_in, raw_out, f"raw-{prefix}"],
        dict(os.environ),
        workdir / "passthrough.log",
    )
    try:
        first, last = await drain(bootstrap, [raw_out], count, timeout=300)
    finally:
        stop(proc)
    return Result("raw aiokafka pass-through", count, count / (last - first), "baseline, same run")


async def run_executor(
    name: str, count: int, workdir: Path, bootstrap: str, database_url: str, crm: dict[str, str]
) -> tuple[float, dict[str, int]]:
    """Preload ``count`` decisions, start the executor, time their executions; their statuses."""
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    settings = await _topics(bootstrap, prefix, [])
    settings = CommonSettings(
        kafka_bootstrap_servers=bootstrap, database_url=database_url, topic_prefix=prefix
    )
    names = TopicNames(prefix)
    pool = await create_pool(database_url)
    try:  # the executor acts on decisions of policy versions the policy service recorded
        await migrate_core(pool)
        await policy_versions.record(
            pool, version="bench", content_hash=POLICY_HASH, source="bench", content="rules: []"
        )
    finally:
        await pool.close()
    await preload(settings, [names(Topic.DECISIONS)], decisions(name, count))
    port = free_port()
    proc = start_service(
        "changegate.executor", settings, workdir / f"executor-{name}.log", port, crm | code_env(CODE)
    )
    try:
        first, last = await drain(bootstrap, [names(Topic.EXECUTIONS)], count, timeout=900)
    finally:
        stop(proc)
    statuses: dict[str, int] = {}
    for envelope in await _read_all(bootstrap, names(Topic.EXECUTIONS), count):
        status = envelope.payload.status.value
        statuses[status] = statuses.get(status, 0) + 1
    return count / (last - first), statuses


async def _read_all(bootstrap: str, topic: str, count: int) -> list[Envelope[Any]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list[Envelope[Any]] = []
    try:
        while len(out) < count:
            batch = await consumer.getmany(timeout_ms=1000)
            if not batch:
                break
            out += [decode(r.value) for records in batch.values() for r in records if r.value]
    finally:
        await consumer.stop()
    return out


async def sandbox(count: int, workdir: Path, bootstrap: str, database_url: str) -> Result:
    pool = await create_pool(database_url)
    try:
        await migrate_core(pool)
        await migrate(pool, "executor", "changegate.executor.migrations")
        await pool.executemany(
            "INSERT INTO sandbox_crm_records (object_type, record_id, properties) VALUES ('contact', $1, $2)",
            [(f"sandbox-{i}", {"jobtitle": "Engineer"}) for i in range(count)],
        )
    finally:
        await pool.close()
    rate, statuses = await run_executor(
        "sandbox", count, workdir, bootstrap, database_url, {"CHANGEGATE_CRM": "sandbox"}
    )
    return Result("executor -> sandbox CRM", count, rate, _statuses(statuses))


def ideal(count: int, limit: tuple[int, float]) -> float:
    """Decisions/s if every window of the limit is used in full (three requests per 100 decisions):
    the requests of the last window go out at its start; within one window, at the long-run rate."""
    requests = 3 * -(-count // 100)
    windows = -(-requests // limit[0])
    seconds = (windows - 1) * limit[1] if windows > 1 else requests / limit[0] * limit[1]
    return count / seconds


async def direct_client(count: int, workdir: Path, limit: tuple[int, float]) -> Result:
    """The executor's HubSpot calls without the executor: batch read, batch update, batch re-read
    of 100 records at a time, one batch after another, through the project's client."""
    port = free_port()
    sim = start(
        [sys.executable, "-m", "changegate.hubspot_sim", "--port", str(port)],
        _sim_env(),
        workdir / "sim-direct.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, 60, sim)
        async with httpx.AsyncClient(base_url=url, timeout=30) as control:
            records = [{"id": f"direct-{i}", "properties": {"jobtitle": "Engineer"}} for i in range(count)]
            (await control.post("/_sim/records", json={"records": records})).raise_for_status()
            (await control.post("/_sim/rate", json={"max": limit[0], "window": limit[1]})).raise_for_status()
        client = HubSpotClient(url, TOKEN, requests_per_window=limit[0], window_seconds=limit[1])
        started = time.perf_counter()
        try:
            for at in range(0, count, 100):
                ids = [{"id": f"direct-{i}"} for i in range(at, min(count, at + 100))]
                read = {"inputs": ids, "properties": ["jobtitle"], "propertiesWithHistory": []}
                update = {"inputs": [{**i, "properties": {"jobtitle": "Engineering Manager"}} for i in ids]}
                path = "/crm/v3/objects/contacts/batch"
                for operation, body in (("batch_read", read), ("batch_update", update), ("batch_read", read)):
                    response = await client.request(
                        operation, "POST", f"{path}/{operation.split('_')[1]}", json=body
                    )
                    response.raise_for_status()
        finally:
            await client.close()
        elapsed = time.perf_counter() - started
    finally:
        stop(sim)
    return Result(
        f"HubSpot client alone, limit {limit[0]}/{limit[1]:.0f} s", count, count / elapsed, "same run"
    )


async def simulator(
    name: str, count: int, workdir: Path, bootstrap: str, database_url: str, limit: tuple[int, float] | None
) -> Result:
    port = free_port()
    sim = start(
        [sys.executable, "-m", "changegate.hubspot_sim", "--port", str(port)],
        _sim_env(),
        workdir / f"sim-{name}.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, 60, sim)
        async with httpx.AsyncClient(base_url=url, timeout=30) as control:
            records = [{"id": f"{name}-{i}", "properties": {"jobtitle": "Engineer"}} for i in range(count)]
            (await control.post("/_sim/records", json={"records": records})).raise_for_status()
            max_requests, window = limit if limit else (None, 10.0)
            (
                await control.post("/_sim/rate", json={"max": max_requests, "window": window})
            ).raise_for_status()
            crm = {
                "CHANGEGATE_CRM": "hubspot",
                "CHANGEGATE_HUBSPOT_BASE_URL": url,
                "CHANGEGATE_HUBSPOT_TOKEN": TOKEN,
                # Unlimited: the client-side limiter out of the way; limited: HubSpot's own limit.
                "CHANGEGATE_HUBSPOT_REQUESTS_PER_WINDOW": str(limit[0] if limit else 1_000_000),
                "CHANGEGATE_HUBSPOT_WINDOW_SECONDS": str(limit[1] if limit else 1.0),
            }
            rate, statuses = await run_executor(name, count, workdir, bootstrap, database_url, crm)
            log = (await control.get("/_sim/log")).json()
    finally:
        stop(sim)
    calls = log["calls"]
    throttled = sum(1 for c in calls if c.get("status") == 429)
    if log["violations"]:
        raise RuntimeError(f"requests HubSpot would refuse: {log['violations'][:3]}")
    detail = (
        f"{_statuses(statuses)}; {100 * len(calls) / count:.1f} HubSpot requests per 100,"
        f" {throttled} answered 429"
    )
    if limit:
        peak = _peak([c["at"] for c in calls], limit[1])
        if peak > limit[0]:
            raise RuntimeError(f"{peak} requests reached HubSpot within {limit[1]:g} s (limit {limit[0]})")
        detail += f", at most {peak} in any {limit[1]:g} s"
    label = "executor -> HubSpot simulator, " + (
        f"limit {limit[0]}/{limit[1]:.0f} s" if limit else "unlimited"
    )
    return Result(label, count, rate, detail)


def _peak(arrivals: list[float], window: float) -> int:
    """The most requests the simulator saw arrive within any ``window`` seconds of its clock."""
    arrivals = sorted(arrivals)
    return max((bisect.bisect_left(arrivals, t + window) - n for n, t in enumerate(arrivals)), default=0)


def _sim_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "tests"), env.get("PYTHONPATH", "")])
    return env


def _statuses(statuses: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))


async def bench(count: int, limited: int, workdir: Path, bootstrap: str, database_url: str) -> list[Result]:
    return [
        await passthrough(count, workdir, bootstrap),
        await sandbox(count, workdir, bootstrap, database_url),
        await simulator("unlimited", count, workdir, bootstrap, database_url, None),
        await direct_client(limited, workdir, HUBSPOT_LIMIT),
        await simulator("limited", limited, workdir, bootstrap, database_url, HUBSPOT_LIMIT),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=5_000, help="decisions per unlimited measurement")
    parser.add_argument(
        "--limited-count",
        type=int,
        default=20_000,
        help="decisions at HubSpot's rate limit (3 requests per 100; several windows of the limit)",
    )
    parser.add_argument(
        "--code", type=Path, help="run the executor from this checkout (e.g. an export of main)"
    )
    args = parser.parse_args()
    global CODE
    CODE = args.code
    workdir = Path(tempfile.mkdtemp(prefix="changegate-bench-"))
    broker = EmbeddedBroker(free_port(), workdir / "broker.log")
    postgres = EmbeddedPostgres(workdir / "pg")
    try:
        bootstrap = broker.start()
        database_url = postgres.start()
        results = asyncio.run(bench(args.count, args.limited_count, workdir, bootstrap, database_url))
    finally:
        broker.stop()
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    baseline = results[0].rate
    for r in results:
        share = "" if r is results[0] else f"  {r.rate / baseline:>5.1%} of the pass-through"
        print(f"{r.name:<46} {r.rate:>9,.1f} /s  ({r.count} decisions{share}; {r.detail})")
    best = ideal(args.limited_count, HUBSPOT_LIMIT)
    limited, direct = results[-1], results[-2]
    print(
        f"batched ideal at {HUBSPOT_LIMIT[0]}/{HUBSPOT_LIMIT[1]:.0f} s: {best:,.0f} /s for"
        f" {args.limited_count} decisions (633 /s in the long run); the client alone does"
        f" {direct.rate / best:.0%} of it"
    )
    ratio = limited.rate / best
    met = ratio >= 0.8 and limited.rate >= 500
    verdict = "met" if met else "NOT met"
    print(f"executor at the limit: {ratio:.0%} of the batched ideal; target >= 80% and >= 500 /s: {verdict}")


if __name__ == "__main__":
    main()
