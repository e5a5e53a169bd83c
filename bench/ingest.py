"""Ingest speed: accepted events/s and request latency of the ingest service for HubSpot batches of
1 and of 100 events, with 50 concurrent senders, next to a bare FastAPI endpoint producing the same
events to the same broker (bench/_bare_ingest.py: no signature, validation or envelope) measured in
the same run (the baseline).

Every request is a signed HubSpot batch (signature v3 computed before the clock starts, so the
senders' own work is the same for both). A request counts when it is answered 200, i.e. once the
broker acknowledged every event of it (acks=all). Runs on the embedded Tansu broker, which it starts
and stops itself; the senders share the machine with the services they measure.

    .venv/bin/python bench/ingest.py [--requests-1 3000] [--requests-100 300] [--senders 50]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import start, start_service, stop
from changegate.cli.embedded import EmbeddedBroker, free_port
from changegate.core.kafka import ensure_topics
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames

HERE = Path(__file__).resolve().parent
SECRET = "bench-hubspot-client-secret-0123456789"
PATH = "/v1/webhooks/hubspot"


@dataclass(frozen=True)
class Result:
    name: str
    batch: int
    events_per_second: float
    p50_ms: float
    p99_ms: float
    failed: int


def requests(url: str, count: int, batch: int, first_id: int) -> list[tuple[bytes, dict[str, str]]]:
    """``count`` signed HubSpot batches of ``batch`` property changes, each of its own records."""
    out = []
    now = int(time.time() * 1000)
    for r in range(count):
        events = [
            {
                "eventId": first_id + r * batch + i,
                "subscriptionId": 25,
                "portalId": 62515,
                "appId": 1160452,
                "occurredAt": now,
                "subscriptionType": "contact.propertyChange",
                "attemptNumber": 0,
                "objectId": 10_000_000 + (r * batch + i) % 50_000,
                "changeSource": "CRM_UI",
                "sourceId": "userId:7",
                "propertyName": "jobtitle",
                "propertyValue": f"Head of Data {r}",
            }
            for i in range(batch)
        ]
        body = json.dumps(events).encode()
        stamp = str(now)
        signature = hmac.new(SECRET.encode(), b"POST" + url.encode() + body + stamp.encode(), hashlib.sha256)
        headers = {
            "Content-Type": "application/json",
            "X-HubSpot-Signature-v3": base64.b64encode(signature.digest()).decode(),
            "X-HubSpot-Request-Timestamp": stamp,
        }
        out.append((body, headers))
    return out


async def load(
    name: str, base: str, batch: int, prepared: list[tuple[bytes, dict[str, str]]], senders: int
) -> Result:
    """``senders`` concurrent senders post the prepared requests; events/s over the wall time."""
    latencies: list[float] = []
    failed = 0
    queue: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()
    for item in prepared:
        queue.put_nowait(item)
    limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def sender() -> None:
            nonlocal failed
            while not queue.empty():
                body, headers = queue.get_nowait()
                started = time.perf_counter()
                response = await client.post(PATH, content=body, headers=headers)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    failed += 1

        began = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(senders)))
        wall = time.perf_counter() - began
    quantiles = statistics.quantiles(latencies, n=100)
    return Result(
        name, batch, len(latencies) * batch / wall, quantiles[49] * 1000, quantiles[98] * 1000, failed
    )


async def offered(
    name: str, base: str, prepared: list[tuple[bytes, dict[str, str]]], rate: float
) -> tuple[str, float, float, float, Counter[int]]:
    """Requests of one event each, sent at ``rate`` per second whatever the answers (as webhooks
    arrive): how many got each status, and the latency of the accepted ones."""
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=500)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def one(body: bytes, headers: dict[str, str]) -> None:
            started = time.perf_counter()
            try:
                response = await client.post(PATH, content=body, headers=headers)
            except httpx.HTTPError:
                statuses[0] += 1
                return
            statuses[response.status_code] += 1
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        tasks = []
        for n, (body, headers) in enumerate(prepared):
            delay = began + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body, headers)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - began
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return name, statuses[200] / wall, q[49] * 1000, q[98] * 1000, statuses


async def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")


async def bench(
    bootstrap: str, workdir: Path, counts: dict[int, int], senders: int, rate: float, seconds: float
) -> tuple[list[Result], list[tuple[str, float, float, float, Counter[int]]]]:
    settings = CommonSettings(kafka_bootstrap_servers=bootstrap, topic_prefix="bench.")
    await ensure_topics(settings, [Topic.CRM_EVENTS])
    topic = TopicNames(settings.topic_prefix)(Topic.CRM_EVENTS)
    ingest_port, bare_port = free_port(), free_port()
    ingest = start_service(
        "changegate.ingest",
        settings,
        workdir / "ingest.log",
        ingest_port,
        {"CHANGEGATE_HUBSPOT_CLIENT_SECRET": SECRET},
    )
    bare = start(
        [sys.executable, str(HERE / "_bare_ingest.py"), bootstrap, topic, str(bare_port)],
        dict(os.environ),
        workdir / "bare.log",
    )
    targets = {"bare FastAPI + aiokafka (baseline)": bare_port, "ingest service": ingest_port}
    results = []
    try:
        await wait_ready(f"http://127.0.0.1:{ingest_port}/readyz")
        await wait_ready(f"http://127.0.0.1:{bare_port}/healthz")
        first_id = 1
        for batch, count in counts.items():
            for name, port in targets.items():
                base = f"http://127.0.0.1:{port}"
                warmup = requests(base + PATH, senders, batch, first_id)
                prepared = requests(base + PATH, count, batch, first_id + senders * batch)
                first_id += (senders + count) * batch
                await load(name, base, batch, warmup, senders)
                results.append(await load(name, base, batch, prepared, senders))
        at_rate = []
        for name, port in targets.items():
            base = f"http://127.0.0.1:{port}"
            prepared = requests(base + PATH, int(rate * seconds), 1, first_id)
            first_id += len(prepared)
            at_rate.append(await offered(name, base, prepared, rate))
    finally:
        stop(ingest)
        stop(bare)
    return results, at_rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests-1", type=int, default=3_000, help="requests of 1 event")
    parser.add_argument("--requests-100", type=int, default=300, help="requests of 100 events")
    parser.add_argument("--senders", type=int, default=50, help="concurrent senders")
    parser.add_argument("--rate", type=float, default=1000, help="requests/s offered (one event each)")
    parser.add_argument("--seconds", type=float, default=10, help="how long the rate is offered")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="changegate-bench-"))
    broker = EmbeddedBroker(free_port(), workdir / "broker.log")
    try:
        bootstrap = broker.start()
        counts = {1: args.requests_1, 100: args.requests_100}
        results, at_rate = asyncio.run(
            bench(bootstrap, workdir, counts, args.senders, args.rate, args.seconds)
        )
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{args.senders} concurrent senders, signed HubSpot batches, acks=all on the embedded broker")
    print(f"{'endpoint':<36} {'batch':>5} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8}  vs baseline")
    baselines = {r.batch: r for r in results if "baseline" in r.name}
    for r in results:
        base = baselines[r.batch]
        share = "" if r is base else f"{r.events_per_second / base.events_per_second:>6.0%} of its events/s"
        failed = f"  ({r.failed} not accepted)" if r.failed else ""
        figures = f"{r.events_per_second:>10,.0f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f}"
        print(f"{r.name:<36} {r.batch:>5} {figures}  {share}{failed}")
    print()
    print(f"{args.rate:,.0f} requests/s of one event offered for {args.seconds:.0f} s, whatever the answers:")
    for name, accepted, p50, p99, statuses in at_rate:
        answers = ", ".join(f"{n} x {s or 'no answer'}" for s, n in sorted(statuses.items()))
        print(f"{name:<36} {accepted:>8,.0f} accepted/s  p50 {p50:,.0f} ms  p99 {p99:,.0f} ms  ({answers})")
    ingest_503 = next(s for n, *_, s in at_rate if "ingest" in n)[503]
    print(f"target: no 503 at {args.rate:,.0f} events/s offered: {'met' if not ingest_503 else 'NOT met'}")


if __name__ == "__main__":
    main()
