"""One running changegate stack (every service as its own process) per e2e module, on the
session's broker and PostgreSQL, with its own topic prefix and database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from changegate.cli.devstack import DEFAULT_PORTS, DevStack
from changegate.cli.embedded import free_port
from changegate.core.auth import Role
from changegate.core.db import create_pool
from changegate.core.kafka import make_producer
from changegate.core.settings import CommonSettings

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def running_stack(kafka_bootstrap: str, database_url: str, **env: str) -> Iterator[DevStack]:
    """Every service as a process on the session's broker and PostgreSQL, in a database and under a
    topic prefix of its own; ``env`` goes to every service."""
    name = f"e2e_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        conn = await asyncpg.connect(database_url)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    asyncio.run(create())
    head, _, query = database_url.partition("?")
    workdir = Path(tempfile.mkdtemp(prefix="changegate-e2e-"))
    stack = DevStack(
        workdir,
        ports={k: free_port() for k in DEFAULT_PORTS},
        topic_prefix=f"e2e{uuid.uuid4().hex[:6]}.",
        kafka=kafka_bootstrap,
        database_url=f"{head.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else ""),
        tokens={
            "alice@example.com": Role.REVIEWER,
            "bob@example.com": Role.REVIEWER,
            "eve@example.com": Role.VIEWER,
        },
        extra_env={
            "CHANGEGATE_LOG_LEVEL": "DEBUG",
            # one territory, so the owner scenario has a rule to apply
            "CHANGEGATE_OWNER": json.dumps(
                {"territories": [{"country": "us", "state": "CA", "owner": OWNER_WEST}]}
            ),
            **env,
        },
    )
    try:
        stack.start(timeout=90)
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


OWNER_WEST = "owner-west"


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, database_url: str) -> Iterator[DevStack]:
    with running_stack(kafka_bootstrap, database_url) as running:
        yield running


@pytest.fixture
async def db(stack: DevStack) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(stack.settings().database_url, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture
async def client(stack: DevStack) -> AsyncIterator[httpx.AsyncClient]:
    """A client authenticated as alice@example.com (a reviewer) unless a request says otherwise."""
    alice = {"Authorization": f"Bearer {stack.issued['alice@example.com']}"}
    async with httpx.AsyncClient(timeout=10, headers=alice) as client:
        yield client


@pytest.fixture
def stack_settings(stack: DevStack) -> CommonSettings:
    return stack.settings()


@pytest.fixture
async def producer(stack_settings: CommonSettings) -> AsyncIterator[object]:
    producer = make_producer(stack_settings, "e2e")
    await producer.start()
    yield producer
    await producer.stop()
