"""The process shell every service runs in: ops HTTP endpoints, signals, graceful shutdown — and
``Service``, the declaration each service makes of itself (name, settings, migrations, consumers
with their batch handlers, HTTP app), from which the shell builds and runs the process."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import platform
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg
import uvicorn
from aiokafka import AIOKafkaProducer
from changegate.core import __version__, metrics, tracing
from changegate.core.consumer_health import ConsumerHealth
from changegate.core.db import create_pool, migrate, pending_migrations
from changegate.core.http import ProblemH11Protocol, harden, problem, problem_responses
from changegate.core.kafka import ConsumerLoop, Subscription, ensure_topics, make_producer, start_with_retry
from changegate.core.logging import configure_logging, get_logger
from changegate.core.outbox import OutboxRelay
from changegate.core.settings import CommonSettings
from changegate.core.signing import SigningKey, Verifier
from changegate.core.topics import Topic, TopicNames
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from pydantic import BaseModel, Field

log = get_logger(__name__)

# A readiness check answers True when its part works; it may be async (a query) and is given
# READINESS_TIMEOUT seconds, after which it counts as failed.
ReadinessCheck = Callable[[], bool | Awaitable[bool]]
READINESS_TIMEOUT = 2.0
# Several worker processes (``Service.http_workers``): the supervisor hands each the listening
# socket and its role; prometheus_client keeps every process's series in this folder (it must be set
# before prometheus_client is imported, which a fresh process does).
WORKER_ROLE = "CHANGEGATE_WORKER_ROLE"  # "primary" (consumers, outbox, housekeeping too) or "http"
WORKER_SOCKET = "CHANGEGATE_WORKER_SOCKET_FD"
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


class Readiness(BaseModel):
    status: str = Field(description="ready")
    checks: dict[str, bool]


async def _passes(check: ReadinessCheck) -> bool:
    try:
        result = check()
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, READINESS_TIMEOUT)
        return bool(result)
    except Exception as exc:  # a failing check is an answer, not an error
        log.info("readiness check failed", error=repr(exc))
        return False


def ops_router(
    checks: dict[str, ReadinessCheck], stopping: asyncio.Event, max_poll_gap: float = 300
) -> APIRouter:
    """``/metrics``, ``/healthz`` (the process answers and every consumer loop polled within
    ``max_poll_gap`` seconds) and ``/readyz`` (every check passes)."""
    router = APIRouter(tags=["operations"])

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def prometheus_metrics() -> Response:
        if MULTIPROC_DIR in os.environ:  # several worker processes: every one's series, merged
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @router.get(
        "/healthz",
        summary="Liveness: the process answers and no consumer loop is wedged",
        responses=problem_responses(503),
    )
    def healthz() -> Response:
        stuck = ConsumerHealth.stuck(max_poll_gap)
        if stuck:
            return problem(
                503, f"not live: {', '.join(stuck)} has not polled for over {max_poll_gap:g}s", stuck=stuck
            )
        return JSONResponse({"status": "ok"})

    @router.get(
        "/readyz",
        summary="Readiness: the database answers, the consumer holds its partitions, not stopping",
        response_model=Readiness,
        responses=problem_responses(503),
    )
    async def readyz() -> Response:
        names = list(checks)
        passed = await asyncio.gather(*(_passes(checks[n]) for n in names))
        results = dict(zip(names, passed, strict=True)) | {"not_stopping": not stopping.is_set()}
        if all(results.values()):
            return JSONResponse({"status": "ready", "checks": results})
        failed = ", ".join(n for n, ok in results.items() if not ok)
        return problem(503, f"not ready: {failed}", checks=results)

    return router


def database_check(pool: asyncpg.Pool) -> ReadinessCheck:
    async def answers() -> bool:
        async with pool.acquire(timeout=READINESS_TIMEOUT) as conn:
            return bool(await conn.fetchval("SELECT 1", timeout=READINESS_TIMEOUT) == 1)

    return answers


def broker_answers(producer: AIOKafkaProducer) -> ReadinessCheck:
    """Ready: the producer runs and a broker answers a metadata request (in the check's time)."""

    async def answers() -> bool:
        if producer._closed:
            return False
        await producer.client.fetch_all_metadata()
        return True

    return answers


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the service shell owns SIGTERM/SIGINT and stops the server itself


class ServiceRuntime:
    """Runs a service's workers beside its HTTP app until SIGTERM/SIGINT, then stops them in order.

    A worker that fails ends the process with an error (a supervisor restarts it); uncommitted
    messages are redelivered, so nothing is lost."""

    def __init__(self, name: str, settings: CommonSettings) -> None:
        self.name = name
        self.settings = settings
        self.stop = asyncio.Event()
        self.checks: dict[str, ReadinessCheck] = {}
        tracing.configure(name, settings.tracing_exporter)
        metrics.BUILD_INFO.labels(service=name, version=__version__, python=platform.python_version()).set(1)

    async def open_database(self, component: str, migrations: str | None = None) -> asyncpg.Pool:
        """Connect, apply (or, with migrate_on_start off, check) the core migrations and the
        service's own, register a readiness check."""
        pool = await create_pool(self.settings.database_url, max_size=self.settings.database_pool_max)
        wanted = [("core", "changegate.core.migrations")] + ([(component, migrations)] if migrations else [])
        for name, package in wanted:
            if self.settings.migrate_on_start:
                await migrate(pool, name, package)
                continue
            async with pool.acquire() as conn:
                pending = await pending_migrations(conn, name, package)
            if pending:
                await pool.close()
                raise SystemExit(
                    f"{self.name}: the database schema is behind ({name}: {', '.join(pending)} not applied); "
                    "run `changegate migrate` as the owner first"
                )
        self.checks["database"] = database_check(pool)
        return pool

    async def open_producer(self, topics: Sequence[Topic] | None = None, **options: Any) -> AIOKafkaProducer:
        """Create ``topics`` (default: all) that do not exist; a started producer (``options`` go
        to aiokafka)."""
        await ensure_topics(self.settings, topics)
        producer = make_producer(self.settings, self.name, **options)
        await start_with_retry(producer)
        self.checks["broker"] = broker_answers(producer)
        return producer

    def app(self, app: FastAPI | None = None) -> FastAPI:
        """The service's HTTP app (or a bare one) with the ops endpoints, problem details for
        every error and the request body limit."""
        app = app or FastAPI(title=f"changegate {self.name}", version=__version__)
        app.include_router(ops_router(self.checks, self.stop, self.settings.liveness_max_poll_gap_seconds))
        return harden(app, self.settings.http_max_body_bytes)

    async def run(
        self,
        app: FastAPI,
        workers: Iterable[Callable[[], Coroutine[Any, Any, None]]],
        sock: socket.socket | None = None,
    ) -> None:
        """Serve ``app`` (on ``sock`` if given, else the configured host and port) beside
        ``workers`` until SIGTERM/SIGINT or a worker fails."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        server = _Server(
            uvicorn.Config(
                app,
                host=self.settings.http_host,
                port=self.settings.http_port,
                log_config=None,
                access_log=False,
                lifespan="off",
                http=ProblemH11Protocol,  # problem+json for what the parser refuses, too
            )
        )
        http = asyncio.create_task(server.serve(sockets=[sock] if sock else None), name="http")
        tasks = [asyncio.create_task(w(), name=getattr(w, "__qualname__", "worker")) for w in workers]
        stopper = asyncio.create_task(self.stop.wait(), name="stop")
        log.info("service started", port=self.settings.http_port)
        done, _ = await asyncio.wait([*tasks, http, stopper], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not stopper and not t.cancelled() and t.exception() is not None]
        self.stop.set()  # /readyz answers 503 from here on
        late: set[asyncio.Task[None]] = set()
        if tasks:  # an HTTP-only service (ingest) has no workers
            _, late = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_seconds)
        for t in late:
            log.warning("worker did not stop in time, cancelling", worker=t.get_name())
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # cancelled ones have unwound
        server.should_exit = True
        await asyncio.wait([http], timeout=5)
        stopper.cancel()
        if failed:
            exc = failed[0].exception()
            log.error("worker failed, exiting", worker=failed[0].get_name(), error=repr(exc), exc_info=exc)
            raise SystemExit(1)
        tracing.shutdown()
        log.info("service stopped")


S = TypeVar("S", bound=CommonSettings)
Worker = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Consumer:
    """A consumer group of the service and what it reads; its readiness check is ``check``."""

    group: str
    subscriptions: Sequence[Subscription]
    check: str = "consumer"


@dataclass
class Parts:
    """What a service's ``setup`` builds: its consumers, HTTP app (made with ``runtime.app``; none:
    the operations endpoints alone), other workers, and what to close at the end (after the workers
    stopped, before the producer and the database)."""

    consumers: list[Consumer] = field(default_factory=list)
    app: FastAPI | None = None
    workers: list[Worker] = field(default_factory=list)
    # Workers each HTTP worker process runs too (with several: e.g. the change feed of the streams
    # it serves); ``workers`` run in the primary process only.
    per_process: list[Worker] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # The running ConsumerLoops, by group (filled in by the shell, for setups that need them).
    loops: dict[str, ConsumerLoop] = field(default_factory=dict)


@dataclass
class Context(Generic[S]):
    """What ``setup`` gets: settings, the runtime (stop event, readiness checks), the database and
    the producer."""

    service: str
    settings: S
    runtime: ServiceRuntime
    producer: AIOKafkaProducer
    _pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, f"{self.service} declares no database"
        return self._pool

    @property
    def names(self) -> TopicNames:
        return TopicNames(self.settings.topic_prefix)

    def signer(self) -> SigningKey:
        return self.settings.signing(self.service)

    def verifier(self) -> Verifier:
        return self.settings.verifier(self.service)


@dataclass(frozen=True)
class Service(Generic[S]):
    """A service, declared: the shell connects what it declares, calls ``setup`` for its own parts,
    runs consumers, outbox relay, workers and HTTP app until SIGTERM, and closes everything.

    ``check`` runs on the settings before anything is connected (a service that cannot work as
    configured refuses to start, saying why); ``topics`` are the topics it creates if missing
    (default: all); ``producer`` gives aiokafka options of its producer."""

    name: str
    settings: Callable[[], S]
    setup: Callable[[Context[S]], Awaitable[Parts]]
    migrations: str | None = None
    database: bool = True
    outbox: bool = False
    check: Callable[[S], None] | None = None
    topics: Sequence[Topic] | None = None
    producer: Callable[[S], dict[str, Any]] | None = None
    # How many processes serve HTTP (from the settings; default one). With more, a supervisor
    # process binds the port and starts them: the first ("primary") runs everything, the others
    # only the HTTP app and ``Parts.per_process``; the kernel spreads connections among them.
    http_workers: Callable[[S], int] | None = None

    async def main(self) -> None:
        settings = self.settings()
        configure_logging(self.name, settings.log_level, settings.log_format)
        if self.check is not None:
            self.check(settings)
        role = os.environ.get(WORKER_ROLE)
        count = self.http_workers(settings) if self.http_workers else 1
        if count > 1 and role is None:
            await supervise(self.name, settings, count)
            return
        sock = socket.socket(fileno=int(os.environ[WORKER_SOCKET])) if role else None
        runtime = ServiceRuntime(self.name, settings)
        closers: list[Callable[[], Awaitable[None]]] = []
        try:
            pool = await runtime.open_database(self.name, self.migrations) if self.database else None
            if pool is not None:
                closers.append(pool.close)
            options = self.producer(settings) if self.producer else {}
            producer = await runtime.open_producer(self.topics, **options)
            closers.append(producer.stop)
            parts = await self.setup(Context(self.name, settings, runtime, producer, pool))
            closers.extend(parts.closers)
            if role == "http":  # the primary runs consumers, outbox and the service's own workers
                watch = parent_watch(runtime.stop)
                await runtime.run(parts.app or runtime.app(), [*parts.per_process, watch], sock)
                return
            workers = [*parts.workers, *parts.per_process]
            if role == "primary":
                workers.append(parent_watch(runtime.stop))
            relay = None
            if self.outbox:
                assert pool is not None, f"{self.name}: an outbox needs the database"
                relay = OutboxRelay(pool, producer, self.name, runtime.stop)
                workers.append(relay.run)
            for consumer in parts.consumers:
                loop = ConsumerLoop(
                    settings,
                    consumer.group,
                    consumer.subscriptions,
                    producer,
                    runtime.stop,
                    committed=relay.nudge if relay else None,
                )
                parts.loops[consumer.group] = loop
                runtime.checks[consumer.check] = loop.has_partitions
                workers.append(loop.run)
            await runtime.run(parts.app or runtime.app(), workers, sock)
        finally:
            for close in reversed(closers):
                await close()


def parent_watch(stop: asyncio.Event) -> Worker:
    """A worker process stops when its supervisor is gone (killed without passing SIGTERM on)."""
    parent = os.getppid()

    async def watch() -> None:
        while not stop.is_set():
            if os.getppid() != parent:
                log.warning("supervisor gone, stopping")
                stop.set()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1)

    return watch


async def supervise(name: str, settings: CommonSettings, count: int) -> None:
    """Bind the HTTP port and run ``count`` worker processes of this same command on it (the first
    the primary), until SIGTERM/SIGINT, passed on to them; if one of them exits, the others are
    stopped and this process exits with an error (its supervisor restarts it)."""
    sock = socket.create_server((settings.http_host, settings.http_port), backlog=2048)
    sock.set_inheritable(True)
    metrics_dir = tempfile.mkdtemp(prefix=f"changegate-{name}-metrics-")
    env = {**os.environ, WORKER_SOCKET: str(sock.fileno()), MULTIPROC_DIR: metrics_dir}
    command = [sys.executable, *sys.orig_argv[1:]]
    procs = [
        await asyncio.create_subprocess_exec(
            *command, env={**env, WORKER_ROLE: "primary" if n == 0 else "http"}, pass_fds=[sock.fileno()]
        )
        for n in range(count)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("workers started", workers=count, port=settings.http_port, pids=[p.pid for p in procs])
    exits = {asyncio.create_task(p.wait()): p for p in procs}
    stopping = asyncio.create_task(stop.wait())
    failed = None
    try:
        done, _ = await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
        failed = next((exits[t] for t in done if t in exits), None)
        if failed is not None:
            log.error("worker exited, stopping the others", pid=failed.pid, code=failed.returncode)
    finally:
        stopping.cancel()
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        _, late = await asyncio.wait(exits, timeout=settings.shutdown_grace_seconds + 10)
        for task in late:
            exits[task].kill()
        await asyncio.gather(*exits)
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if failed is not None:
        raise SystemExit(1)
