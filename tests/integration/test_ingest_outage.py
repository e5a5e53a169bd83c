"""A broker outage seen from the ingest service: while the broker cannot be reached, a webhook is
answered 503 with Retry-After (never 2xx for an event that is not stored) and /readyz says not
ready; once the broker is back, the sender's retry is accepted and every event ever acknowledged is
on the topic — nothing lost, nothing doubled (each retry carries the same envelope ids).

The outage is real from the service's side: a broker of its own, reached only through a TCP proxy
that the test closes (connections reset, new ones refused) and opens again. The broker itself keeps
running, because the embedded broker keeps its topics in memory only."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from changegate.cli.embedded import EmbeddedBroker, free_port
from changegate.core.kafka import ensure_topics
from changegate.core.serde import decode
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames
from helpers import eventually, service_process

SECRET = "7d0b6a3e-2c1f-4e8d-9a7b-6c5d4e3f2a1b"
PUBLIC_URL = "https://hooks.example.com/changegate"  # behind a proxy: HubSpot signs the URI it called


class TcpProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target> from a thread of its own (so nothing the
    test blocks on stalls it); ``cut()`` resets every connection and stops listening, ``restore()``
    listens again."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.BaseTransport] = set()

    def __enter__(self) -> TcpProxy:
        self.thread.start()
        self.restore()
        return self

    def __exit__(self, *_: object) -> None:
        if self.server is not None:
            self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def _run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def restore(self) -> None:
        async def listen() -> None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

        self._run(listen())

    def cut(self) -> None:
        async def close() -> None:
            assert self.server is not None
            self.server.close()
            for transport in list(self.transports):
                transport.abort()  # type: ignore[attr-defined]
            self.transports.clear()
            self.server = None

        self._run(close())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self.transports |= {writer.transport, upstream_writer.transport}
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65_536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


@pytest.fixture
def broker_ports() -> Iterator[tuple[int, int]]:
    """A broker of its own on one port, advertising another (where the proxy will listen)."""
    workdir = Path(tempfile.mkdtemp(prefix="changegate-outage-"))
    listen, advertised = free_port(), free_port()
    broker = EmbeddedBroker(listen, workdir / "broker.log", advertised_port=advertised)
    broker.start()
    try:
        yield listen, advertised
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def proxy(broker_ports: tuple[int, int]) -> Iterator[TcpProxy]:
    listen, advertised = broker_ports
    with TcpProxy(advertised, listen) as proxy:
        yield proxy


def batch(first_event_id: int, records: int) -> list[dict[str, Any]]:
    now = int(time.time() * 1000)
    return [
        {
            "eventId": first_event_id + i,
            "portalId": 62515,
            "occurredAt": now,
            "subscriptionType": "contact.propertyChange",
            "attemptNumber": 0,
            "objectId": 1000 + i,
            "propertyName": "city",
            "propertyValue": f"city {first_event_id + i}",
        }
        for i in range(records)
    ]


def signed(body: bytes) -> dict[str, str]:
    stamp = str(int(time.time() * 1000))
    url = f"{PUBLIC_URL}/v1/webhooks/hubspot"
    digest = hmac.new(
        SECRET.encode(), b"POST" + url.encode() + body + stamp.encode(), hashlib.sha256
    ).digest()
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
        "X-HubSpot-Request-Timestamp": stamp,
    }


async def stored_ids(settings: CommonSettings, wanted: set[str]) -> tuple[set[str], int]:
    """The distinct envelope ids on crm.events and the number of records, read until ``wanted``."""
    consumer = AIOKafkaConsumer(
        TopicNames(settings.topic_prefix)(Topic.CRM_EVENTS),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    ids: set[str] = set()
    records = 0
    deadline = time.monotonic() + 20
    try:
        while not wanted <= ids and time.monotonic() < deadline:
            for batch_ in (await consumer.getmany(timeout_ms=200)).values():
                for record in batch_:
                    ids.add(str(decode(record.value).event_id))
                    records += 1
    finally:
        await consumer.stop()
    return ids, records


async def test_a_broker_outage_is_a_503_and_nothing_accepted_is_lost(
    proxy: TcpProxy, broker_ports: tuple[int, int], tmp_path: Path
) -> None:
    settings = CommonSettings(kafka_bootstrap_servers=f"127.0.0.1:{broker_ports[1]}", topic_prefix="o.")
    await ensure_topics(settings, [Topic.CRM_EVENTS])
    env = {
        "CHANGEGATE_HUBSPOT_CLIENT_SECRET": SECRET,
        "CHANGEGATE_PUBLIC_BASE_URL": PUBLIC_URL,
        "CHANGEGATE_PRODUCE_TIMEOUT_SECONDS": "2",
        "CHANGEGATE_RETRY_AFTER_SECONDS": "3",
    }
    with service_process("changegate.ingest", settings, free_port(), tmp_path / "ingest.log", **env) as svc:
        async with httpx.AsyncClient(base_url=svc.url, timeout=30) as client:

            async def deliver(events: list[dict[str, Any]]) -> httpx.Response:
                body = json.dumps(events).encode()
                return await client.post("/v1/webhooks/hubspot", content=body, headers=signed(body))

            before = await deliver(batch(1, 50))
            assert before.status_code == 200, before.text
            acknowledged = set(before.json()["event_ids"])

            proxy.cut()
            during = batch(100, 50)
            refused = await deliver(during)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "3"
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert (await client.get("/readyz")).status_code == 503
            metrics = (await client.get("/metrics")).text
            assert 'changegate_ingest_refused_total{reason="broker_unavailable",source="hubspot"}' in metrics

            proxy.restore()
            # The sender retries after Retry-After, as HubSpot does, until it is accepted.
            retried = await eventually(
                lambda: deliver(during), lambda r: r.status_code == 200, timeout=60, what="retry accepted"
            )
            acknowledged |= set(retried.json()["event_ids"])
            after = await deliver(batch(200, 50))
            assert after.status_code == 200, after.text
            acknowledged |= set(after.json()["event_ids"])
            assert (await client.get("/readyz")).status_code == 200

    assert len(acknowledged) == 150
    ids, records = await stored_ids(settings, acknowledged)
    assert acknowledged <= ids, f"{len(acknowledged - ids)} acknowledged events are not on the topic"
    assert ids == acknowledged  # nothing but what was sent; a late copy of a refused event has its id
    assert records >= len(ids)
