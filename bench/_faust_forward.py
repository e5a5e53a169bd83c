"""Baseline for bench/detector_worker.py: a bare faust-streaming agent that only forwards events.

Usage: python bench/_faust_forward.py BOOTSTRAP SOURCE_TOPIC TARGET_TOPIC GROUP"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from changegate.core.settings import CommonSettings
from changegate.detector.faust_runtime import make_app


async def main(bootstrap: str, source: str, target: str, group: str) -> None:
    app = make_app(group, CommonSettings(kafka_bootstrap_servers=bootstrap))
    src = app.topic(source, value_serializer="raw", key_serializer="raw")
    dst = app.topic(target, value_serializer="raw", key_serializer="raw")

    @app.agent(src)
    async def forward(stream: Any) -> None:
        async for event in stream.events():
            await dst.send(key=event.key, value=event.value)

    await app.start()
    try:
        await asyncio.Event().wait()
    finally:
        await app.stop()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
