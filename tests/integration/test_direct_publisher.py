"""docs/examples/produce_crm_event.py, run as a pipeline would run it, against the real broker: what
it stores is what every consumer decodes, and the same event sent twice carries the same id."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

from changegate.core.contracts import CrmEventKind
from changegate.core.serde import decode
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames
from helpers import read_topic

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "produce_crm_event.py"


def run_example(settings: CommonSettings, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--bootstrap", settings.kafka_bootstrap_servers, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_the_example_producer_publishes_what_consumers_accept(
    settings: CommonSettings, topics: None
) -> None:
    event_id = uuid.uuid4().hex
    args = ["--topic-prefix", settings.topic_prefix, "--record-id", "1246965", "--jobtitle", "Head of Data"]
    out = await asyncio.to_thread(run_example, settings, *args, "--source-event-id", event_id)
    again = await asyncio.to_thread(run_example, settings, *args, "--source-event-id", event_id)
    assert out.split()[1] == again.split()[1]  # "stored <envelope id> in …": the same id twice

    records = await read_topic(
        settings.kafka_bootstrap_servers, TopicNames(settings.topic_prefix)(Topic.CRM_EVENTS), 2
    )
    assert len(records) == 2
    for record in records:
        envelope = decode(record.value, expected={"crm_event"})  # type: ignore[attr-defined]
        assert record.key == b"1246965"  # type: ignore[attr-defined]
        assert str(envelope.event_id) == out.split()[1]
        assert envelope.payload.kind is CrmEventKind.ENRICHMENT_RESULT
        assert envelope.payload.properties == {"jobtitle": "Head of Data"}
        assert envelope.payload.source_event_id == event_id
