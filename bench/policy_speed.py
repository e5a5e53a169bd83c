"""Policy speed: decisions/s of the evaluator alone, and of the policy service against the broker
next to a raw aiokafka consume->produce pass-through measured in the same run (the baseline).

Runs on the embedded stack (Tansu + PostgreSQL from the wheels), which it starts and stops itself.
Target: the service routes at >= 50% of the pass-through rate.

    .venv/bin/python bench/policy_speed.py [--count 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import SIGNING_KEYS, drain, preload, start, start_service, stop
from changegate.cli.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from changegate.core.contracts.envelope import make_envelope
from changegate.core.kafka import ensure_topics
from changegate.core.serde import encode
from changegate.core.settings import CommonSettings
from changegate.core.signing import SigningKey
from changegate.core.topics import Topic, TopicNames
from changegate.policy.engine import Policy
from changegate.policy.samples import sample_proposals

HERE = Path(__file__).resolve().parent


def bench_evaluator(count: int) -> float:
    policy = Policy.load()
    proposals = list(sample_proposals(count, seed=5))
    started = time.perf_counter()
    for p in proposals:
        policy.evaluate(p)
    return count / (time.perf_counter() - started)


async def bench_pipeline(count: int, workdir: Path, bootstrap: str, database_url: str) -> tuple[float, float]:
    settings = CommonSettings(
        kafka_bootstrap_servers=bootstrap,
        database_url=database_url,
        topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
    )
    names = TopicNames(settings.topic_prefix)
    await ensure_topics(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    raw_in, raw_out = f"{settings.topic_prefix}raw.in", f"{settings.topic_prefix}raw.out"
    await admin.create_topics([NewTopic(raw_in, 3, 1), NewTopic(raw_out, 3, 1)])
    await admin.close()
    detector = SigningKey.parse(SIGNING_KEYS["detector"], "detector")  # the policy routes only these
    payloads = [
        (
            p.record_id.encode(),
            encode(make_envelope(detector.sign(p), service="bench", correlation_id=p.proposal_id)),
        )
        for p in sample_proposals(count, seed=7)
    ]
    await preload(settings, [raw_in, names(Topic.PROPOSALS)], payloads)

    # Baseline: raw pass-through over the same bytes.
    passthrough = start(
        [
            sys.executable,
            str(HERE / "_passthrough.py"),
            bootstrap,
            raw_in,
            raw_out,
            f"raw-{uuid.uuid4().hex[:6]}",
        ],
        dict(os.environ),
        workdir / "passthrough.log",
    )
    try:
        first, last = await drain(bootstrap, [raw_out], count, timeout=300)
    finally:
        stop(passthrough)
    raw_rate = count / (last - first)

    # The policy service, routing the same proposals (database, outbox and all).
    port = free_port()
    service = start_service("changegate.policy", settings, workdir / "policy.log", port)
    try:
        first, last = await drain(
            bootstrap, [names(Topic.DECISIONS), names(Topic.PROPOSALS_PENDING)], count, timeout=600
        )
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        routed = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("changegate_policy_decisions_total{")
        )
        assert routed == count, f"service routed {routed}, expected {count}"
    finally:
        stop(service)
    return raw_rate, count / (last - first)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20_000, help="proposals per measurement")
    args = parser.parse_args()
    evaluator = bench_evaluator(args.count)
    print(
        f"evaluator alone:            {evaluator:>10,.0f} decisions/s  ({args.count} proposals, "
        "default policy)"
    )
    workdir = Path(tempfile.mkdtemp(prefix="changegate-bench-"))
    broker = EmbeddedBroker(free_port(), workdir / "broker.log")
    postgres = EmbeddedPostgres(workdir / "pg")
    try:
        bootstrap = broker.start()
        database_url = postgres.start()
        raw, service = asyncio.run(bench_pipeline(args.count, workdir, bootstrap, database_url))
    finally:
        broker.stop()
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"raw aiokafka pass-through:  {raw:>10,.0f} messages/s  (baseline, same run)")
    print(
        f"policy service:             {service:>10,.0f} decisions/s  (decode, evaluate, PostgreSQL, outbox)"
    )
    ratio = service / raw
    print(
        f"service / pass-through:     {ratio:>10.0%}   target >= 50%: {'met' if ratio >= 0.5 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
