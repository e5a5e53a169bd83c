"""Can a Faust GlobalTable carry the detector's record state across replicas on this broker?

A GlobalTable is what the detector's index needs in shape: a changelog topic every replica reads in
full. This probe measures whether faust-streaming's public API delivers it on the broker at hand
(the embedded Tansu by default, whose ListOffsets answer for a partition's end is wrong): a writer
replica puts ``--updates`` keys into a GlobalTable; then a second replica of the same app starts and
waits for Faust to say recovery is complete (``app.tables.wait_until_recovery_completed()``); the
probe counts what that replica holds at that moment — when a detector would start proposing — and
again after ``--settle`` seconds. Only public Faust API is used.

    .venv/bin/python bench/faust_global_table.py [--updates 1000] [--kafka HOST:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

HERE = Path(__file__).resolve()


def make_app(app_id: str, bootstrap: str, datadir: Path) -> tuple[faust.App, Any, Any]:
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        web_enabled=False,
        datadir=str(datadir),
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=3.0,
        broker_rebalance_timeout=3.0,
        broker_heartbeat_interval=0.5,
        topic_partitions=3,
        producer_acks=-1,
    )
    table = app.GlobalTable("records", default=None, partitions=3)
    updates = app.topic(f"{app_id}-updates", key_type=str, value_type=str, partitions=3)
    return app, table, updates


async def writer(app_id: str, bootstrap: str, datadir: Path, count: int) -> None:
    """Put ``count`` keys into the table (from an agent, as Faust wants), print when done."""
    app, table, updates = make_app(app_id, bootstrap, datadir)
    done = asyncio.Event()
    seen = 0

    @app.agent(updates)
    async def put(stream: Any) -> None:
        nonlocal seen
        async for key, value in stream.items():
            table[key] = value
            seen += 1
            if seen >= count:
                done.set()

    await app.start()
    try:
        await asyncio.wait_for(done.wait(), 600)
        await asyncio.sleep(3)  # the changelog writes of the last events acknowledged
        print(json.dumps({"written": seen}), flush=True)
        await asyncio.Event().wait()  # stays a member until stopped
    finally:
        await app.stop()


async def reader(app_id: str, bootstrap: str, datadir: Path, settle: float) -> None:
    """Start a replica, wait for Faust's recovery, count what the table holds then and later."""
    app, table, _ = make_app(app_id, bootstrap, datadir)
    started = time.monotonic()
    await app.start()
    try:
        await asyncio.wait_for(app.tables.wait_until_recovery_completed(), 300)
        at_ready = len(table)
        ready_after = time.monotonic() - started
        await asyncio.sleep(settle)
        print(json.dumps({"at_ready": at_ready, "ready_after": ready_after, "later": len(table)}), flush=True)
    finally:
        await app.stop()


def _recovery_end(log: str) -> int | None:
    """The end offsets Faust's recovery read up to, summed over the changelog's partitions (from
    its own log: the "Highwater - Active" table, which it takes from ListOffsets)."""
    table = log.split("Highwater for active changelog partitions:", 1)
    if len(table) < 2:
        return None
    rows = [line for line in table[1].splitlines()[3:12] if line.startswith("|")]
    return sum(int(line.split("|")[3]) for line in rows if line.split("|")[3].strip().lstrip("-").isdigit())


def probe(bootstrap: str, count: int, settle: float, workdir: Path) -> dict[str, Any]:
    app_id = f"probe-{uuid.uuid4().hex[:6]}"
    role = [sys.executable, str(HERE), "--role"]
    common = ["--app", app_id, "--kafka", bootstrap, "--updates", str(count), "--settle", str(settle)]

    async def topics() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(f"{app_id}-updates", 3, 1)])
        finally:
            await admin.close()

    asyncio.run(topics())
    w = subprocess.Popen(
        [*role, "writer", *common, "--datadir", str(workdir / "w")],
        stdout=subprocess.PIPE,
        stderr=(workdir / "writer.log").open("wb"),
        text=True,
    )
    try:
        time.sleep(8)  # joined, topics created

        async def feed() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
            await producer.start()
            try:
                topic = f"{app_id}-updates"
                futures = [
                    await producer.send(topic, json.dumps(f"v{i}").encode(), key=json.dumps(f"k{i}").encode())
                    for i in range(count)
                ]
                await asyncio.gather(*futures)
            finally:
                await producer.stop()

        asyncio.run(feed())
        assert w.stdout is not None
        written = json.loads(w.stdout.readline())
        r = subprocess.run(
            [*role, "reader", *common, "--datadir", str(workdir / "r")],
            capture_output=True,
            text=True,
            timeout=600,
        )
        (workdir / "reader.log").write_text(r.stderr)
        result = json.loads(r.stdout.strip().splitlines()[-1])
        return {**written, **result, "recovery_end": _recovery_end(r.stderr)}
    finally:
        w.terminate()
        try:
            w.wait(30)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument(
        "--settle", type=float, default=20.0, help="seconds the reader keeps reading after ready"
    )
    parser.add_argument("--kafka", help="a broker to use instead of starting the embedded Tansu")
    parser.add_argument("--role", choices=["writer", "reader"], help=argparse.SUPPRESS)
    parser.add_argument("--app", help=argparse.SUPPRESS)
    parser.add_argument("--datadir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # cleanup below runs on SIGTERM too
    if args.role:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if args.role == "writer":
        asyncio.run(writer(args.app, args.kafka, args.datadir, args.updates))
        return
    if args.role == "reader":
        asyncio.run(reader(args.app, args.kafka, args.datadir, args.settle))
        return
    from changegate.cli.embedded import EmbeddedBroker, free_port

    workdir = Path(tempfile.mkdtemp(prefix="changegate-probe-"))
    broker = None
    try:
        bootstrap = args.kafka
        if bootstrap is None:
            broker = EmbeddedBroker(free_port(), workdir / "broker.log")
            bootstrap = broker.start()
        result = probe(bootstrap, args.updates, args.settle, workdir)
    finally:
        if broker is not None:
            broker.stop()
        logs = workdir / "reader.log"
        tail = logs.read_text()[-2000:] if logs.exists() else ""
        if not os.environ.get("KEEP_PROBE"):
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"broker: {'Tansu (embedded)' if args.kafka is None else args.kafka}")
    print(f"keys written by the first replica:          {result['written']}")
    print(
        f"keys the second replica held at 'recovered': {result['at_ready']} "
        f"({result['ready_after']:.1f} s after start)"
    )
    print(f"keys it held {args.settle:.0f} s later:                {result['later']}")
    end = result["recovery_end"]
    if end is not None:
        print(
            f"changelog offsets recovery read up to (ListOffsets): {end} of {result['written']} written"
            " (one changelog record per update)"
        )
        if end < result["written"]:
            print(
                "=> 'recovery complete' came before the end of the changelog: what the replica held then"
                " depended on how fast its standby reading caught up, and no public API says when it has"
            )
    if result["at_ready"] < result["written"]:
        print("=> the replica held less than the changelog when recovery said complete")
    if tail and result["later"] < result["written"]:
        print(tail)


if __name__ == "__main__":
    main()
