"""Baseline for bench/policy_speed.py: raw aiokafka consume -> produce, no decoding, no database.

Usage: python bench/_passthrough.py BOOTSTRAP SOURCE_TOPIC TARGET_TOPIC GROUP"""

from __future__ import annotations

import asyncio
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from changegate.core.settings import CommonSettings


async def main(bootstrap: str, source: str, target: str, group: str) -> None:
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=CommonSettings().kafka_fetch_max_wait_ms,  # as the stack's consumers
        max_poll_records=500,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        rebalance_timeout_ms=1000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await consumer.start()
    await producer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                futures = [await producer.send(target, r.value, key=r.key) for r in records]
                await asyncio.gather(*futures)
                await consumer.commit({tp: records[-1].offset + 1})
    finally:
        await producer.stop()
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
