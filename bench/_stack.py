"""Helpers the benchmarks share: preloading topics, draining them, running a service process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from changegate.core.kafka import make_producer
from changegate.core.settings import CommonSettings
from changegate.core.signing import dev_keys


async def preload(settings: CommonSettings, topics: list[str], payloads: list[tuple[bytes, bytes]]) -> None:
    """Produce (key, value) payloads to each topic, acknowledged."""
    producer = make_producer(settings, "bench")
    await producer.start()
    try:
        for topic in topics:
            futures = [await producer.send(topic, value, key=key) for key, value in payloads]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def drain(bootstrap: str, topics: list[str], count: int, timeout: float) -> tuple[float, float]:
    """Read ``count`` messages from ``topics``; return (first arrival, last arrival) times."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=15,
        max_poll_records=2000,
    )
    await consumer.start()
    seen, first, last = 0, 0.0, 0.0
    deadline = time.monotonic() + timeout
    try:
        while seen < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            n = sum(len(r) for r in batch.values())
            if n:
                now = time.perf_counter()
                first = first or now
                last, seen = now, seen + n
    finally:
        await consumer.stop()
    if seen < count:
        raise RuntimeError(f"only {seen}/{count} messages arrived")
    return first, last


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def code_env(code: Path | None) -> dict[str, str]:
    """Environment that makes services run the code of another checkout (``code``: its root, e.g.
    an export of main), for a before/after measured in one run; empty for this checkout."""
    if code is None:
        return {}
    roots = [code / "shared" / "src", *sorted((code / "services").glob("*/src"))]
    return {"PYTHONPATH": os.pathsep.join(str(r) for r in roots)}


# The benchmark's own signing keys: each signing service its key, every service trusts them all.
SIGNING_KEYS, TRUSTED_KEYS = dev_keys("bench")


def start_service(
    module: str, settings: CommonSettings, log: Path, port: int, extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A changegate service as its own process, pointed at the benchmark's broker and database
    (``extra``: the service's own settings)."""
    service = module.removeprefix("changegate.").replace("_", "-")
    env = {
        **os.environ,
        "CHANGEGATE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "CHANGEGATE_DATABASE_URL": settings.database_url,
        "CHANGEGATE_TOPIC_PREFIX": settings.topic_prefix,
        "CHANGEGATE_HTTP_PORT": str(port),
        "CHANGEGATE_LOG_LEVEL": "WARNING",
        "CHANGEGATE_AUTH_API_TOKENS": "true",
        "CHANGEGATE_TRUSTED_KEYS": json.dumps({k: t.model_dump() for k, t in TRUSTED_KEYS.items()}),
        **({"CHANGEGATE_SIGNING_KEY": SIGNING_KEYS[service]} if service in SIGNING_KEYS else {}),
        **(extra or {}),
    }
    return start([sys.executable, "-m", module], env, log)
