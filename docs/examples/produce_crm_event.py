"""Publish a CrmEvent straight onto changegate's crm.events topic, as an existing pipeline would.

Needs only aiokafka and jsonschema (no changegate code): it builds the envelope by hand, checks it
against the checked-in JSON Schema (schemas/crm_event.v2.schema.json), and produces it keyed by
the record id with acks=all. Run it against the dev stack (`make up`):

    python docs/examples/produce_crm_event.py --record-id 1246965 --jobtitle "Head of Data"

The envelope id is derived from your own id of the event (--source-event-id), so sending the same
event again — a retry, a replay — is recognised downstream and acted on once. See docs/events.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
from aiokafka import AIOKafkaProducer

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "crm_event.v2.schema.json"
# Any fixed namespace of yours: the same (source, event id) must always give the same envelope id.
NAMESPACE = uuid.UUID("0b5a6e1c-3f2d-4c8b-9e7a-6d5c4b3a2f10")


def envelope(
    source: str, source_event_id: str, record_id: str, properties: dict[str, Any], confidence: float
) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {
        "event_id": str(uuid.uuid5(NAMESPACE, f"{source}|{source_event_id}")),
        "event_type": "crm_event",
        "schema_version": 2,
        "occurred_at": now,
        "correlation_id": None,
        "producer": {"service": f"pipeline:{source}", "version": "1.0.0"},
        "payload": {
            "source_system": source,
            "source_event_id": source_event_id,
            "object_type": "contact",
            "record_id": record_id,
            "kind": "enrichment_result",
            "properties": properties,
            "confidence": confidence,
            "occurred_at": now,
            "requested_by": f"pipeline:{source}",  # who caused it: never the approver of its proposal
        },
    }


async def publish(bootstrap: str, topic: str, message: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")  # enable_idempotence=True on Kafka
    await producer.start()
    try:
        value = json.dumps(message, separators=(",", ":")).encode()
        metadata = await producer.send_and_wait(topic, value, key=message["payload"]["record_id"].encode())
        where = f"{metadata.topic}[{metadata.partition}] at offset {metadata.offset}"
        print(f"stored {message['event_id']} in {where}")
    finally:
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:19092", help="Kafka bootstrap servers")
    parser.add_argument("--topic-prefix", default="changegate.", help="CHANGEGATE_TOPIC_PREFIX of the stack")
    parser.add_argument("--source", default="enrichment-pipeline", help="your system's name")
    parser.add_argument("--source-event-id", default=None, help="your id of this event (default: a new one)")
    parser.add_argument("--record-id", required=True, help="the CRM record id")
    parser.add_argument("--jobtitle", required=True, help="the value your pipeline found")
    parser.add_argument("--confidence", type=float, default=0.9)
    args = parser.parse_args()
    message = envelope(
        args.source,
        args.source_event_id or uuid.uuid4().hex,
        args.record_id,
        {"jobtitle": args.jobtitle},
        args.confidence,
    )
    jsonschema.validate(message, json.loads(SCHEMA.read_text()))  # what the consumers accept
    asyncio.run(publish(args.bootstrap, f"{args.topic_prefix}crm.events", message))


if __name__ == "__main__":
    main()
