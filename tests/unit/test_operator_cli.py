"""The operator CLI's pure parts: where a command finds its stack, how `status` reads the services'
metrics, what `replay` sends again."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from changegate.cli import stack
from changegate.cli.replay import Plan, classify, copy_of
from changegate.cli.status import parse, summarise, table
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.envelope import make_envelope
from changegate.core.dlq import DeadLetter
from changegate.core.serde import decode, encode
from changegate.core.settings import CommonSettings
from rich.console import Console


def _state(workdir: Path, pid: int) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "state.json").write_text(
        json.dumps(
            {
                "supervisor_pid": pid,
                "kafka": "127.0.0.1:29092",
                "database_url": "postgresql://postgres@127.0.0.1:25432/postgres",
                "topic_prefix": "acme.",
                "ports": {"broker": 29092, "audit": 29094},
            }
        )
    )


def test_a_running_stack_s_state_fills_what_the_environment_leaves_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "TOPIC_PREFIX"):
        monkeypatch.delenv(f"CHANGEGATE_{name}", raising=False)
    _state(tmp_path, os.getpid())
    found = stack.common(tmp_path)
    assert found.kafka_bootstrap_servers == "127.0.0.1:29092"
    assert found.database_url == "postgresql://postgres@127.0.0.1:25432/postgres"
    assert found.topic_prefix == "acme."
    assert stack.service_urls(tmp_path) == {"audit": "http://127.0.0.1:29094"}
    monkeypatch.setenv("CHANGEGATE_DATABASE_URL", "postgresql://ops@db/changegate")
    assert stack.common(tmp_path).database_url == "postgresql://ops@db/changegate"  # the variable wins
    monkeypatch.delenv("CHANGEGATE_DATABASE_URL")
    given = stack.settings(tmp_path, CommonSettings, database_url="postgresql://cli@db/flag")
    assert given.database_url == "postgresql://cli@db/flag"  # a command's own option wins too
    assert given.topic_prefix == "acme."


def test_a_state_file_left_by_a_stack_that_is_gone_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHANGEGATE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    _state(tmp_path, 2**22 + 12345)  # above the kernel's pid limit: no such process
    assert stack.common(tmp_path).kafka_bootstrap_servers == "127.0.0.1:19092"
    assert stack.common(tmp_path / "nothing-here").kafka_bootstrap_servers == "127.0.0.1:19092"


def test_tables_outside_a_terminal_keep_their_full_width() -> None:
    piped = stack.log_friendly(Console(file=open(os.devnull, "w"), force_terminal=False))  # noqa: SIM115
    assert piped.width >= 1000


BEFORE = """
changegate_messages_consumed_total{topic="changegate.decisions",outcome="processed"} 100.0
changegate_consumer_lag_messages{group="g",topic="changegate.decisions",partition="0"} 0.0
"""
AFTER = """
changegate_messages_consumed_total{topic="changegate.decisions",outcome="processed"} 130.0
changegate_messages_consumed_total{topic="changegate.decisions",outcome="dead_lettered"} 5.0
changegate_consumer_lag_messages{group="g",topic="d",partition="0"} 7.0
changegate_consumer_lag_messages{group="g",topic="d",partition="1"} 0.0
changegate_consumer_last_progress_timestamp_seconds{group="g",topic="d",partition="0"} 1000.0
changegate_consumer_last_progress_timestamp_seconds{group="g",topic="d",partition="1"} 1.0
changegate_dead_letters_total{topic="changegate.decisions",reason="crm_refused"} 5.0
changegate_executor_crm_breaker_state{target="hubspot"} 2.0
changegate_consumer_partition_paused{group="g",topic="changegate.decisions",partition="0"} 1.0
changegate_outbox_pending_messages 3.0
"""


def test_status_reads_rates_lag_stalls_and_the_breaker_from_two_scrapes() -> None:
    row = summarise("executor", "http://x", parse(BEFORE), parse(AFTER), 10.0, (False, ["consumer"]))
    assert row.rate_per_second == pytest.approx(3.0)  # processed only, dead letters apart
    assert row.lag == 7
    assert row.dead_letters == 5
    assert row.breaker == "open"
    assert row.paused_partitions == 1
    assert row.queue == 3
    assert row.not_ready == ["consumer"]
    # Only the partition with lag counts as stalled; the idle one's old progress does not.
    assert row.stalled_seconds is not None
    assert row.stalled_seconds == pytest.approx(datetime.now(UTC).timestamp() - 1000, abs=5)
    rendered = Console(width=200, file=open(os.devnull, "w"))  # noqa: SIM115
    rendered.print(table([row]))


def _record(event: CrmEvent, at: datetime, offset: int = 0) -> DeadLetter:
    value = encode(make_envelope(event, service="t"))
    return DeadLetter("changegate.crm.events", 1, offset, int(at.timestamp() * 1000), b"k", value)


def _crm_event(kind: CrmEventKind, **update: object) -> CrmEvent:
    event = CrmEvent(
        source_system="hubspot",
        source_event_id="e1",
        object_type=ObjectType.CONTACT,
        record_id="c1",
        kind=kind,
        properties={"firstname": "Ada"},
    )
    return event.model_copy(update=update)


def test_replay_sends_again_what_detection_proposes_from_and_leaves_out_the_rest() -> None:
    since = datetime(2026, 12, 1, tzinfo=UTC)
    plan = Plan("changegate.crm.events", since, None, "run-1")
    classify(plan, _record(_crm_event(CrmEventKind.RECORD_CREATED), datetime(2026, 11, 30, tzinfo=UTC)))
    classify(plan, _record(_crm_event(CrmEventKind.RECORD_CREATED), datetime(2026, 12, 2, tzinfo=UTC)))
    classify(plan, _record(_crm_event(CrmEventKind.RECORD_DELETED), datetime(2026, 12, 2, tzinfo=UTC)))
    classify(
        plan, _record(_crm_event(CrmEventKind.PROPERTY_CHANGED, echo=True), datetime(2026, 12, 2, tzinfo=UTC))
    )
    classify(plan, _record(_crm_event(CrmEventKind.SCORE, redetect=True), datetime(2026, 12, 2, tzinfo=UTC)))
    broken = DeadLetter(
        "changegate.crm.events", 0, 9, int(datetime(2026, 12, 3, tzinfo=UTC).timestamp() * 1000), None, b"{"
    )
    classify(plan, broken)
    assert plan.read == 6
    assert dict(plan.by_kind) == {"record_created": 1}
    assert dict(plan.left_out) == {
        "record_deleted (changes state only)": 1,
        "an echo of our own write": 1,
        "already a replay": 1,
        "undecodable": 1,
    }
    [(record, event)] = plan.to_send
    first, again = decode(copy_of(record, event, "run-1")), decode(copy_of(record, event, "run-1"))
    assert first.payload.redetect is True
    assert first.payload.source_event_id == "e1"  # proposals keep their ids: decided stays decided
    assert first.event_id == again.event_id  # the same run twice: one event for the detector
    assert decode(copy_of(record, event, "run-2")).event_id != first.event_id
