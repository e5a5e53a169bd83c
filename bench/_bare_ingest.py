"""Baseline for bench/ingest.py: a bare FastAPI endpoint on the same server (uvicorn, one process)
that produces each event of a posted JSON array to the broker (acks=all, the same producer options)
and answers once all are acknowledged — no signature, no validation, no envelope, no metrics.

Usage: python bench/_bare_ingest.py BOOTSTRAP TOPIC PORT"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request

BOOTSTRAP, TOPIC, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
state: dict[str, AIOKafkaProducer] = {}


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    # aiokafka binds the producer to the running loop, so it is made here
    producer = state["producer"] = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=2)
    await producer.start()
    yield
    await producer.stop()


app = FastAPI(lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/webhooks/hubspot")
async def webhook(request: Request) -> dict[str, Any]:
    events = json.loads(await request.body())
    producer = state["producer"]
    futures = [
        await producer.send(TOPIC, json.dumps(e).encode(), key=str(e["objectId"]).encode()) for e in events
    ]
    await asyncio.gather(*futures)
    return {"accepted": len(futures)}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=PORT, log_config=None, access_log=False)
