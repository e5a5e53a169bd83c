"""One running changegate stack (every service as its own process) per e2e module, on the
session's broker and PostgreSQL, with its own topic prefix and database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest
from changegate.cli.devstack import DevStack
from changegate.core.db import create_pool
from changegate.core.kafka import make_producer
from changegate.core.settings import CommonSettings
from helpers import running_stack

pytestmark = pytest.mark.e2e


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
