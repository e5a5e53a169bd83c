"""Review API speed with 1,000,000 pending items: p50/p99 (and requests/s) of the first page, a
deep page (by cursor), an item's detail and an approval, each at 50 concurrent clients, for each
review-api configuration in turn (worker processes; optionally another checkout's code first, for a
before and after in one run). Beside each: the load generator's ceiling against a trivial server,
a bare asyncpg query of the same first page (no HTTP, no auth, no JSON in Python) and /healthz.

Targets: list and detail p99 <= 20 ms, approve p99 <= 30 ms. The server, PostgreSQL, the broker
and this load generator share one machine (2 cores here), so the figures include their contention;
they are printed as measured, met or not, with the load average.

    .venv/bin/python bench/review_api.py [--items 1000000] [--requests 2000] [--clients 50]
        [--workers 1,2] [--baseline-code DIR]"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import code_env, start, start_service, stop
from changegate.cli.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from changegate.core.auth import Grant, Principal, Role
from changegate.core.auth.tokens import create_token
from changegate.core.db import create_pool, migrate
from changegate.core.kafka import ensure_topics
from changegate.core.settings import CommonSettings
from changegate.review_api import store

HERE = Path(__file__).resolve().parent
KINDS = ["field_update", "merge", "lifecycle_transition", "owner_reassignment", "email_verification"]
QUEUES = ["default", "dedup", "sales-ops", "verify"]
PRIORITIES = ["high", "normal", "normal", "normal", "low"]
COLUMNS = (
    "proposal_id",
    "kind",
    "object_type",
    "record_id",
    "confidence",
    "proposal",
    "queue",
    "priority",
    "enqueued_at",
    "routed_by",
    "explanation",
    "required_approvals",
)
ROUTED_BY = {
    "kind": "policy",
    "identity": "policy:bench",
    "policy_version": "bench",
    "policy_hash": "b" * 64,
    "rule_id": "bench-review",
}


def rows(start: int, count: int, now: datetime) -> list[tuple[Any, ...]]:
    out = []
    rng = random.Random(start)
    for n in range(start, start + count):
        pid = uuid.UUID(int=n + 1)
        kind = KINDS[n % len(KINDS)]
        rid = f"rec-{n}"
        proposal = {
            "proposal_id": str(pid),
            "kind": kind,
            "object_type": "contact",
            "record_id": rid,
            "other_record_ids": [f"rec-{n}-dup"] if kind == "merge" else [],
            "changes": [
                {
                    "field": "jobtitle",
                    "previous": f"Engineer {n % 97}",
                    "proposed": f"Staff Engineer {n % 89}",
                }
            ],
            "source": {
                "system": ["clay", "hubspot", "zerobounce"][n % 3],
                "event_id": f"ev-{n}",
                "detector": "bench",
                "detector_version": "1",
                "trigger": "rule",
            },
            "confidence": round(rng.random(), 3),
            "rationale": f"Clay found a newer job title for rec-{n} on their company page",
            "evidence": {"source_url": f"https://example.com/people/{n}"},
            "proposed_at": (now - timedelta(seconds=n)).isoformat(),
            "requested_by": None,
        }
        out.append(
            (
                pid,
                kind,
                "contact",
                rid,
                proposal["confidence"],
                proposal,
                QUEUES[n % len(QUEUES)],
                PRIORITIES[n % len(PRIORITIES)],
                now - timedelta(seconds=rng.randrange(30 * 86400)),
                ROUTED_BY,
                "sent to review: rule bench-review",
                1,
            )
        )
    return out


async def load(pool: asyncpg.Pool, items: int) -> None:
    now = datetime.now(UTC)
    batch = 50_000
    started = time.perf_counter()
    async with pool.acquire() as conn:
        # Loading is not what is measured: history triggers off for the bulk load (owner session).
        await conn.execute("SET session_replication_role = replica")
        for start in range(0, items, batch):
            await conn.copy_records_to_table(
                "review_queue", columns=COLUMNS, records=rows(start, min(batch, items - start), now)
            )
            print(f"  loaded {min(start + batch, items):,} items", end="\r", flush=True)
        await conn.execute("SET session_replication_role = origin")
        await conn.execute("ANALYZE review_queue")
    print(f"  loaded {items:,} pending items in {time.perf_counter() - started:.0f} s")


async def measure(
    name: str, call: Callable[[int], Awaitable[None]], requests: int, clients: int
) -> tuple[str, int, float, float, float]:
    """``requests`` calls by ``clients`` concurrent clients (each sends its next request when its
    answer came): (name, count, p50 ms, p99 ms, requests per second)."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker() -> None:
        for n in counter:
            started = time.perf_counter()
            await call(n)
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    rate = len(latencies) / (time.perf_counter() - began)
    q = statistics.quantiles(latencies, n=100)
    if name != "warm-up":
        print(f"  {name}: p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms, {rate:,.0f}/s", flush=True)
    return name, len(latencies), q[49] * 1000, q[98] * 1000, rate


class Client:
    """``clients`` keep-alive connections to one server (aiohttp: httpx's one pool of 50
    connections costs the generator more than the server it measures; its ceiling is printed)."""

    def __init__(self, base: str, token: str, clients: int) -> None:
        self.session = aiohttp.ClientSession(
            base,
            headers={"Authorization": f"Bearer {token}"},
            connector=aiohttp.TCPConnector(limit=clients),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def call(self, method: str, path: str, params: dict[str, str] | None = None) -> tuple[int, str]:
        async with self.session.request(method, path, params=params) as response:
            return response.status, await response.text()

    async def get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, str]:
        return await self.call("GET", path, params)

    async def aclose(self) -> None:
        await self.session.close()


async def wait_ready(client: Client, path: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if (await client.get(path))[0] == 200:
                return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not answer 200 within 120 s")
        await asyncio.sleep(0.2)


Result = tuple[str, int, float, float, float]


Call = Callable[[int], Awaitable[None]]


class Server:
    """One review-api (its own process, with ``env``) and the operations measured against it, each
    phase beside the generator's ceiling and the bare query, measured just before it."""

    def __init__(
        self,
        settings: CommonSettings,
        connect: Callable[[str], Client],
        log: Path,
        env: dict[str, str],
        ceiling: Call,
        bare: Call,
        deep_cursors: list[str],
        detail_ids: list[str],
        approve_ids: list[str],
    ) -> None:
        self.settings, self.connect, self.log, self.env = settings, connect, log, env
        self.ceiling, self.bare = ceiling, bare
        self.deep_cursors, self.detail_ids, self.approve_ids = deep_cursors, detail_ids, approve_ids
        self.client: Client | None = None

    @property
    def http(self) -> Client:
        assert self.client is not None
        return self.client

    async def floor(self, _: int) -> None:
        status, text = await self.http.get("/healthz")
        assert status == 200, text

    async def first_page(self, _: int) -> None:
        status, text = await self.http.get("/v1/proposals", {"limit": "50"})
        assert status == 200, text

    async def deep_page(self, n: int) -> None:
        cursor = self.deep_cursors[n % len(self.deep_cursors)]
        status, text = await self.http.get("/v1/proposals", {"limit": "50", "cursor": cursor})
        assert status == 200, text

    async def detail(self, n: int) -> None:
        status, text = await self.http.get(f"/v1/proposals/{self.detail_ids[n]}")
        assert status == 200, text

    async def approve(self, n: int) -> None:
        status, text = await self.http.call("POST", f"/v1/proposals/{self.approve_ids[n]}/approve")
        assert status in (200, 409), text

    async def measure(self, requests: int, clients: int) -> list[Result]:
        port = free_port()
        extra = {
            "CHANGEGATE_REVIEW_DECISION_RATE_LIMIT": "100000000/minute",
            "CHANGEGATE_DATABASE_POOL_MAX": "20",
            **self.env,
        }
        proc = start_service("changegate.review_api", self.settings, self.log, port, extra)
        base = f"http://127.0.0.1:{port}"
        self.client = self.connect(base)
        try:
            await wait_ready(self.http, "/readyz")
            for warm in (self.first_page, self.deep_page, self.detail):  # warm caches and connections
                await measure("warm-up", warm, min(200, requests), clients)
            phases: list[tuple[str, Call]] = [
                ("load generator ceiling: trivial server", self.ceiling),
                ("bare asyncpg: first page (baseline)", self.bare),
                ("GET /healthz (HTTP floor: no auth, no query)", self.floor),
                ("GET /v1/proposals (first page)", self.first_page),
                ("GET /v1/proposals?cursor= (deep page)", self.deep_page),
                ("GET /v1/proposals/{id} (detail)", self.detail),
                ("POST /v1/proposals/{id}/approve", self.approve),
            ]
            results = []
            for name, call in phases:
                # Fresh connections per phase: a keep-alive connection the server closed while
                # idle between phases would otherwise fail the next phase's first request on it.
                await self.http.aclose()
                self.client = self.connect(base)
                await measure("warm-up", self.floor, clients * 2, clients)  # open the phase's connections
                results.append(await measure(name, call, requests, clients))
            return results
        except BaseException:
            lines = self.log.read_text().splitlines()[-30:]
            print("review-api's last log lines:\n" + "\n".join(lines))
            raise
        finally:
            await self.http.aclose()
            stop(proc)


async def run(
    items: int, requests: int, clients: int, variants: list[tuple[str, Path | None, int]], workdir: Path
) -> None:
    broker = EmbeddedBroker(free_port(), workdir / "broker.log")
    postgres = EmbeddedPostgres(workdir / "pgdata")
    kafka = broker.start()
    database_url = postgres.start()
    trivial: subprocess.Popen[bytes] | None = None
    try:
        settings = CommonSettings(
            kafka_bootstrap_servers=kafka, database_url=database_url, topic_prefix="bench."
        )
        await ensure_topics(settings)
        pool = await create_pool(database_url, max_size=clients + 2)
        await migrate(pool, "core", "changegate.core.migrations")
        await migrate(pool, "review-api", "changegate.review_api.migrations")
        await load(pool, items)
        _, token = await create_token(pool, "bench@example.com", Role.REVIEWER, created_by="bench")

        def connect(base: str) -> Client:
            return Client(base, token, clients)

        everyone = Principal("bench", (Grant(Role.VIEWER),))
        # Deep pages: cursors of rows far down the queue (as a client paging there would hold).
        deep = await pool.fetch(
            "SELECT priority_rank, enqueued_at, proposal_id FROM review_queue"
            " WHERE status = 'pending' ORDER BY priority_rank, enqueued_at, proposal_id"
            " OFFSET $1 LIMIT 1",
            items - 1000,
        )
        deep_cursors = [store.encode_cursor(deep[0])]
        for _ in range(49):  # 50 different deep cursors
            _, following = await store.page(pool, store.Filters(), everyone, 10, deep_cursors[-1])
            if following is None:
                break
            deep_cursors.append(following)
        detail_ids = [str(uuid.UUID(int=random.randrange(items) + 1)) for _ in range(requests)]
        # Each variant approves items of its own, never decided before.
        approvable = iter(random.sample(range(items), requests * len(variants)))

        # The load generator's ceiling: the same clients against a server that does nothing.
        trivial_port = free_port()
        trivial = start(
            [sys.executable, str(HERE / "_trivial_http.py"), str(trivial_port)],
            dict(os.environ),
            workdir / "trivial.log",
        )
        trivial_client = connect(f"http://127.0.0.1:{trivial_port}")
        await wait_ready(trivial_client, "/")

        async def ceiling(_: int) -> None:
            status, text = await trivial_client.get("/")
            assert status == 200, text

        # The generator this benchmark used before (httpx, one pool of ``clients`` connections),
        # against the same trivial server: its own ceiling, printed once.
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{trivial_port}", limits=limits) as pooled:

            async def httpx_ceiling(_: int) -> None:
                assert (await pooled.get("/")).status_code == 200

            await measure("warm-up", httpx_ceiling, min(500, requests), clients)
            before = await measure(
                "load generator ceiling, httpx with one pool (the generator before)",
                httpx_ceiling,
                requests,
                clients,
            )

        async def bare(_: int) -> None:  # the API's own query of the first page, without HTTP
            await store.page_json(pool, store.Filters(), everyone, 50, None)

        for warm in (bare, ceiling):
            await measure("warm-up", warm, min(500, requests), clients)
        tables: list[tuple[str, list[Result]]] = [("the load generator alone", [before])]
        for label, code, workers in variants:
            print(f"{label}:", flush=True)
            log = workdir / f"review-api-{len(tables)}.log"
            env = {"CHANGEGATE_REVIEW_WORKERS": str(workers), **code_env(code)}
            approve_ids = [str(uuid.UUID(int=next(approvable) + 1)) for _ in range(requests)]
            server = Server(settings, connect, log, env, ceiling, bare, deep_cursors, detail_ids, approve_ids)
            tables.append((label, await server.measure(requests, clients)))
        await trivial_client.aclose()
        targets = {"first page": 20, "deep page": 20, "detail": 20, "approve": 30}
        load1, load5, _ = os.getloadavg()
        print(
            f"\n{items:,} pending items, {clients} concurrent clients, {requests:,} requests each;"
            f" {os.cpu_count()} cores, load average {load1:.1f} (1 min) {load5:.1f} (5 min) at the end"
        )
        for label, results in tables:
            print(f"\n{label}")
            print(f"{'operation':<46} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8} {'per s':>7}  target p99")
            for name, n, p50, p99, rate in results:
                target = next((t for k, t in targets.items() if k in name and "/v1/" in name), None)
                verdict = "" if target is None else f"  {target} ms: {'met' if p99 <= target else 'missed'}"
                print(f"{name:<46} {n:>9,} {p50:>8.2f} {p99:>8.2f} {rate:>7,.0f}{verdict}")
        await pool.close()
    finally:
        if trivial is not None:
            stop(trivial)
        broker.stop()
        postgres.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=2000, help="requests per operation")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument(
        "--workers",
        default="1,2",
        help="review-api HTTP worker counts to measure, each in turn (CHANGEGATE_REVIEW_WORKERS)",
    )
    parser.add_argument(
        "--baseline-code",
        type=Path,
        help="also measure the review-api of this checkout (e.g. an export of main), 1 worker, first",
    )
    args = parser.parse_args()
    variants: list[tuple[str, Path | None, int]] = []
    if args.baseline_code is not None:
        variants.append((f"review-api of {args.baseline_code.name}, 1 worker", args.baseline_code, 1))
    variants += [(f"review-api, {n} worker(s)", None, int(n)) for n in args.workers.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="changegate-bench-review-"))
    try:
        asyncio.run(run(args.items, args.requests, args.clients, variants, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
