"""PostgreSQL-side guarantees: migrations, the outbox, compare-and-set, the append-only audit log."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from changegate.audit.chain import verify
from changegate.audit.store import append_execution
from changegate.core import outbox
from changegate.core.contracts import (
    Decider,
    Decision,
    DecisionOutcome,
    Execution,
    ExecutionStatus,
    FieldChange,
    FieldWrite,
    ObjectType,
    Proposal,
    ProposalKind,
    ProposalSource,
    Trigger,
)
from changegate.core.contracts.envelope import make_envelope
from changegate.core.db import claim_event, migrate, migrate_core
from changegate.core.kafka import make_producer
from changegate.core.outbox import OutboxRelay
from changegate.core.serde import decode, encode
from changegate.core.settings import CommonSettings
from helpers import created, read_topic, rewrite_audit_chain, signing_key, verifier

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


async def test_migrations_apply_once_and_refuse_edited_files(pool: asyncpg.Pool) -> None:
    await migrate_core(pool)
    assert await migrate(pool, "audit", "changegate.audit.migrations") == [1, 2, 3, 4, 5, 6]
    assert await migrate(pool, "audit", "changegate.audit.migrations") == []
    await pool.execute("UPDATE changegate_migrations SET checksum = 'x' WHERE component = 'audit'")
    with pytest.raises(RuntimeError, match="changed after it was applied"):
        await migrate(pool, "audit", "changegate.audit.migrations")


async def test_claim_event_is_once_per_consumer(pool: asyncpg.Pool) -> None:
    await migrate_core(pool)
    event_id = uuid.uuid4()
    async with pool.acquire() as conn:
        assert await claim_event(conn, "a", event_id)
        assert not await claim_event(conn, "a", event_id)
        assert await claim_event(conn, "b", event_id)


async def test_outbox_publishes_committed_messages_only(
    pool: asyncpg.Pool, settings: CommonSettings, topics: None
) -> None:
    await migrate_core(pool)
    topic = f"{settings.topic_prefix}crm.events"
    kept = make_envelope(created("kept"), service="t")
    rolled_back = make_envelope(created("rolled-back"), service="t")
    async with pool.acquire() as conn:
        async with conn.transaction():
            await outbox.enqueue(conn, "svc", topic, "kept", kept)
        tx = conn.transaction()
        await tx.start()
        await outbox.enqueue(conn, "svc", topic, "rolled-back", rolled_back)
        await tx.rollback()  # the state write failed: its message must not leave
    producer = make_producer(settings, "t")
    await producer.start()
    stop = asyncio.Event()
    relay = OutboxRelay(pool, producer, "svc", stop)
    task = asyncio.create_task(relay.run())
    try:
        records = await read_topic(settings.kafka_bootstrap_servers, topic, 1)
        assert [decode(r.value).event_id for r in records] == [kept.event_id]  # type: ignore[attr-defined]
        for _ in range(50):
            if await pool.fetchval("SELECT count(*) FROM changegate_outbox") == 0:
                break
            await asyncio.sleep(0.1)
        assert await pool.fetchval("SELECT count(*) FROM changegate_outbox") == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await producer.stop()


def _execution(record_id: str, fields: dict[str, str]) -> Execution:
    changes = [FieldChange(field=f, previous=None, proposed=v) for f, v in fields.items()]
    proposal = Proposal(
        proposal_id=uuid.uuid4(),
        kind=ProposalKind.FIELD_UPDATE,
        object_type=ObjectType.CONTACT,
        record_id=record_id,
        changes=changes,
        source=ProposalSource(
            system="clay",
            event_id="e",
            detector="enrichment",
            detector_version="1",
            trigger=Trigger.ENRICHMENT,
        ),
        confidence=0.9,
        rationale="r",
        proposed_at=NOW,
    )
    decision = Decision(
        decision_id=uuid.uuid4(),
        proposal=proposal,
        outcome=DecisionOutcome.APPROVED,
        decided_by=Decider(kind="human", identity="alice@example.com"),
        decided_at=NOW,
        explanation="approved",
        final_changes=changes,
    )
    return Execution(
        execution_id=uuid.uuid4(),
        decision=decision,
        status=ExecutionStatus.APPLIED,
        writes=[FieldWrite(field=c.field, expected=None, overwritten=None, new=c.proposed) for c in changes],
        crm_target="sandbox",
        executed_at=NOW,
    )


async def test_audit_log_is_append_only_and_tampering_is_detected(pool: asyncpg.Pool) -> None:
    await migrate_core(pool)
    await migrate(pool, "audit", "changegate.audit.migrations")
    for i in range(3):
        async with pool.acquire() as conn, conn.transaction():
            await append_execution(conn, _execution(f"c{i}", {"jobtitle": f"T{i}", "city": "Oslo"}))
    report = await verify(pool)
    assert report.ok
    assert report.rows == 6

    for statement in (
        "UPDATE audit_entries SET new_value = '\"x\"' WHERE seq = 2",
        "DELETE FROM audit_entries WHERE seq = 2",
        "TRUNCATE audit_entries",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await pool.execute(statement)

    # Someone with the power to disable the triggers alters one row and removes another.
    await pool.execute("ALTER TABLE audit_entries DISABLE TRIGGER USER")
    await pool.execute("UPDATE audit_entries SET new_value = '\"CEO\"' WHERE seq = 2")
    await pool.execute("DELETE FROM audit_entries WHERE seq = 5")
    report = await verify(pool)
    assert not report.ok
    assert "row 2: content does not match its hash (altered)" in report.problems
    assert "rows 5..5 are missing" in report.problems


async def test_a_chain_checked_in_ranges_links_them_and_finds_what_lies_on_their_edges(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify checks ranges of seqs in parallel: a row missing at a range's start, a row altered at
    another's end and the links between ranges are found as in one pass."""
    from changegate.audit import chain

    await migrate_core(pool)
    await migrate(pool, "audit", "changegate.audit.migrations")
    monkeypatch.setattr(chain, "_RANGE", 2)  # ranges (0, 2], (2, 4], (4, 6], (6, 8]
    for i in range(4):
        async with pool.acquire() as conn, conn.transaction():
            await append_execution(conn, _execution(f"r{i}", {"jobtitle": f"T{i}", "city": "Oslo"}))
    intact = await verify(pool)
    assert (intact.ok, intact.rows, intact.head_seq) == (True, 8, 8)
    assert (
        await verify(pool, start=(3, await pool.fetchval("SELECT hash FROM audit_entries WHERE seq = 3")))
    ).ok
    await pool.execute("ALTER TABLE audit_entries DISABLE TRIGGER USER")
    await pool.execute("DELETE FROM audit_entries WHERE seq = 3")
    await pool.execute("UPDATE audit_entries SET new_value = '\"CEO\"' WHERE seq = 6")
    report = await verify(pool)
    assert report.problems == [
        "rows 3..3 are missing",
        "row 4: prev_hash does not link to the row before it",
        "row 6: content does not match its hash (altered)",
    ]
    assert (report.rows, report.head_seq, report.head_hash) == (7, 8, intact.head_hash)


async def test_the_audit_service_verifies_its_chain_and_says_so_in_metrics(pool: asyncpg.Pool) -> None:
    """What ChangegateAuditChainBroken reads: the problems the last scheduled verification found.
    A round checks the signed checkpoints and recomputes only the rows after the latest."""
    from changegate.audit.checkpoints import sign_head
    from changegate.audit.watch import ChainWatch
    from changegate.core.topics import TopicNames
    from prometheus_client import REGISTRY

    await migrate_core(pool)
    await migrate(pool, "audit", "changegate.audit.migrations")
    for i in range(2):
        async with pool.acquire() as conn, conn.transaction():
            await append_execution(conn, _execution(f"w{i}", {"jobtitle": f"T{i}"}))
    watch = ChainWatch(pool, verifier(), 3600, asyncio.Event())
    broken_before = (
        REGISTRY.get_sample_value("changegate_audit_chain_verifications_total", {"result": "broken"}) or 0
    )
    assert await watch.once()
    assert REGISTRY.get_sample_value("changegate_audit_chain_problems") == 0
    assert REGISTRY.get_sample_value("changegate_audit_chain_rows") == 2
    verified_at = REGISTRY.get_sample_value("changegate_audit_chain_last_verification_timestamp_seconds")
    assert verified_at is not None
    assert abs(verified_at - time.time()) < 60
    checkpoint, _ = await sign_head(pool, signing_key("audit"), TopicNames("watch."))
    assert checkpoint is not None
    assert checkpoint.seq == 2
    async with pool.acquire() as conn, conn.transaction():
        await append_execution(conn, _execution("w2", {"jobtitle": "T2"}))
    assert await watch.once()
    assert REGISTRY.get_sample_value("changegate_audit_chain_rows") == 1  # after the checkpoint only
    await pool.execute("ALTER TABLE audit_entries DISABLE TRIGGER USER")
    await pool.execute("UPDATE audit_entries SET new_value = '\"CEO\"' WHERE seq = 3")
    assert not await watch.once()
    assert REGISTRY.get_sample_value("changegate_audit_chain_problems") == 1
    # The owner rewrites row 1 and recomputes every hash after it: the checkpoint no longer matches.
    await rewrite_audit_chain(pool, {1: "CEO"})
    assert not await watch.once()
    assert REGISTRY.get_sample_value("changegate_audit_chain_problems") == 1  # the checkpoint at 2
    broken = REGISTRY.get_sample_value("changegate_audit_chain_verifications_total", {"result": "broken"})
    assert broken == broken_before + 2


async def test_audit_values_survive_the_database_round_trip(pool: asyncpg.Pool) -> None:
    await migrate_core(pool)
    await migrate(pool, "audit", "changegate.audit.migrations")
    odd_values = {"revenue": 2.5e16, "score": 0.1 + 0.2, "is_customer": "true", "employees": 2**53 - 1}
    execution = _execution("c-values", {k: str(v) for k, v in odd_values.items()})
    writes = [
        FieldWrite(field=k, expected=None, overwritten=None if k != "score" else False, new=v)
        for k, v in odd_values.items()
    ]
    async with pool.acquire() as conn, conn.transaction():
        await append_execution(conn, execution.model_copy(update={"writes": writes}))
    report = await verify(pool)
    assert report.problems == []
    assert report.rows == 4


async def test_rows_cut_from_the_end_are_caught_against_a_recorded_head(pool: asyncpg.Pool) -> None:
    await migrate_core(pool)
    await migrate(pool, "audit", "changegate.audit.migrations")
    for i in range(3):
        async with pool.acquire() as conn, conn.transaction():
            await append_execution(conn, _execution(f"h{i}", {"jobtitle": f"T{i}"}))
    head = await verify(pool)
    assert (head.ok, head.head_seq) == (True, 3)
    await pool.execute("ALTER TABLE audit_entries DISABLE TRIGGER USER")
    await pool.execute("DELETE FROM audit_entries WHERE seq = 3")
    assert (await verify(pool)).ok  # the shorter chain is consistent in itself…
    cut = await verify(pool, (head.head_seq, head.head_hash))
    assert cut.problems == ["row 3 (the expected head) is missing: the log was cut short"]


async def test_outbox_sets_aside_a_message_the_broker_refuses_and_keeps_going(
    pool: asyncpg.Pool, settings: CommonSettings, topics: None
) -> None:
    await migrate_core(pool)
    topic = f"{settings.topic_prefix}crm.events"
    notes = {f"notes{i}": "x" * 60_000 for i in range(40)}  # 2.4 MB: within the contract, not Kafka
    huge = make_envelope(created("huge", **notes), service="t")
    after = make_envelope(created("after"), service="t")
    async with pool.acquire() as conn, conn.transaction():
        await outbox.enqueue(conn, "svc", topic, "huge", huge)
        await outbox.enqueue(conn, "svc", topic, "after", after)
    producer = make_producer(settings, "t")
    await producer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(OutboxRelay(pool, producer, "svc", stop).run())
    try:
        records = await read_topic(settings.kafka_bootstrap_servers, topic, 1)
        assert [decode(r.value).event_id for r in records] == [after.event_id]  # type: ignore[attr-defined]
        failed = await pool.fetch("SELECT topic, error FROM changegate_outbox_failed")
        assert [r["topic"] for r in failed] == [topic]
        assert "MessageSizeTooLarge" in failed[0]["error"]
        # … and dead-lettered where an operator looks, with the reason and the start of the body.
        [dead] = await read_topic(settings.kafka_bootstrap_servers, f"{topic}.dlq", 1)
        headers = dict(dead.headers)  # type: ignore[attr-defined]
        assert headers["x-changegate-reason"] == b"refused_by_broker"
        assert b"MessageSizeTooLarge" in headers["x-changegate-error"]
        assert headers["x-changegate-truncated"] == b"true"
        assert headers["x-changegate-outbox-id"].startswith(b"svc/")
        assert dead.value == encode(huge)[:1024]  # type: ignore[attr-defined]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await producer.stop()
