"""The audit log in PostgreSQL: every outcome chained, older rows still verifying after the
migration that brought them, and the chain as the standalone verifier reads an export."""

from __future__ import annotations

import hashlib
import json
import random
import struct
import uuid
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest
import rfc8785
from changegate.audit.chain import (
    GENESIS,
    SQL_CANONICAL,
    SQL_DOMAIN,
    chain_body,
    row_hash,
    verify,
)
from changegate.audit.store import (
    Outcome,
    append_decisions,
    append_executions,
    append_outcomes,
    record_decisions,
)
from changegate.core.contracts import (
    AuditMode,
    Decider,
    DecisionOutcome,
    ExecutionStatus,
    FieldChange,
)
from changegate.core.contracts.base import PropertyValue
from changegate.core.db import _load_migrations, migrate, migrate_core
from helpers import approved_decision, ended_decision, execution_of, legacy_audit_row

MIGRATIONS = "changegate.audit.migrations"


async def test_every_outcome_is_chained_once_and_verifies(pool: asyncpg.Pool) -> None:
    await migrate_core(pool)
    await migrate(pool, "audit", MIGRATIONS)
    decisions = [
        ended_decision(o, f"r-{o.value}") for o in (DecisionOutcome.REJECTED, DecisionOutcome.EXPIRED)
    ]
    decisions.append(ended_decision(DecisionOutcome.SUPERSEDED, "r-superseded"))
    executions = [
        execution_of(approved_decision(f"r-{s.value}", {"city": (None, "Oslo")}), s, error=f"{s.value}!")
        for s in ExecutionStatus
    ]
    for _ in range(2):  # a redelivered batch writes nothing twice
        async with pool.acquire() as conn, conn.transaction():
            kept = await record_decisions(conn, decisions)
            await append_decisions(conn, [d for d, k in zip(decisions, kept, strict=True) if k])
            fresh = await conn.fetch(
                "SELECT e FROM unnest($1::uuid[]) e WHERE NOT EXISTS"
                " (SELECT 1 FROM audit_entries WHERE execution_id = e)",
                [e.execution_id for e in executions],
            )
            todo = {r["e"] for r in fresh}
            await append_executions(conn, [e for e in executions if e.execution_id in todo])
    rows = await pool.fetch("SELECT record_id, mode, reason, decider FROM audit_entries ORDER BY seq")
    assert [(r["record_id"], r["mode"]) for r in rows] == [
        ("r-rejected", "rejected"),
        ("r-expired", "expired"),
        ("r-superseded", "superseded"),
        ("r-applied", "approved"),
        ("r-conflict", "conflict"),
        ("r-failed", "failed"),
        ("r-noop", "noop"),
    ]
    assert (rows[0]["reason"], rows[0]["decider"]) == ("rejected in review", "human")
    assert rows[5]["reason"] == "failed!"
    report = await verify(pool)
    assert (report.ok, report.rows) == (True, 7), report.problems


async def _apply_up_to(pool: asyncpg.Pool, last: int) -> None:
    """The audit migrations up to ``last``, as an older release applied them."""
    await migrate_core(pool)
    for version, name, sql in _load_migrations(MIGRATIONS):
        if version <= last:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO changegate_migrations (component, version, name, checksum)"
                    " VALUES ('audit', $1, $2, $3)",
                    version,
                    name,
                    hashlib.sha256(sql.encode()).hexdigest(),
                )


async def test_rows_written_before_the_migration_still_verify_and_the_chain_continues(
    pool: asyncpg.Pool,
) -> None:
    await _apply_up_to(pool, 3)
    prev, hashes = GENESIS, []
    for seq, value in enumerate(["CTO", 2.5e16, 10**18, "Ünïcode"], 1):
        row = legacy_audit_row(seq, prev, value)
        args = dict(row)
        for name in ("previous_value", "new_value", "proposed_value"):
            args[name] = json.dumps(row[name])
        for name in ("proposed_at", "decided_at", "executed_at"):
            args[name] = datetime.fromisoformat(row[name])
        for name in ("proposal_id", "decision_id", "execution_id"):
            args[name] = uuid.UUID(row[name])
        places = ", ".join(f"${i + 1}" for i in range(len(args)))
        await pool.execute(f"INSERT INTO audit_entries ({', '.join(args)}) VALUES ({places})", *args.values())
        prev = row["hash"]
        hashes.append(prev)

    assert await migrate(pool, "audit", MIGRATIONS) == [4, 5, 6]
    stored = await pool.fetch("SELECT *, tableoid::regclass::text AS part FROM audit_entries ORDER BY seq")
    assert {r["hash_version"] for r in stored} == {1}
    assert all(row_hash(r) == r["hash"] for r in stored)
    # Partitioned by month (0006): the old rows in their outcome's month, moved as they were.
    assert {r["part"] for r in stored} == {"audit_entries_2026_11"}
    assert [r["hash"] for r in stored] == hashes
    async with pool.acquire() as conn, conn.transaction():
        decision = approved_decision("new-1", {"city": (None, "Oslo")})
        await append_executions(conn, [execution_of(decision, ExecutionStatus.APPLIED)])
    report = await verify(pool)
    assert (report.ok, report.rows) == (True, 5), report.problems
    new = await pool.fetchrow(
        "SELECT hash_version, prev_hash, tableoid::regclass::text AS part FROM audit_entries WHERE seq = 5"
    )
    assert new is not None
    assert (new["hash_version"], new["prev_hash"]) == (2, prev)
    assert new["part"] == f"audit_entries_{datetime.now(UTC):%Y_%m}"  # appended now: this month


def _nasty_text(rng: random.Random) -> str:
    alphabet = [chr(c) for c in range(1, 0xA0)] + list("éß€\u2028\u2029\ufeff\uffff😀𝄞中")
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def _nasty_float(rng: random.Random) -> float:
    pick = rng.random()
    if pick < 0.3:
        return rng.random()  # a confidence
    if pick < 0.6:  # any double
        return float(struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0])
    return rng.choice(
        [
            *(0.0, -0.0, 1.0, 0.1, 1 / 3, 1e-4, 9.99e-5, 1e-5, 5e-324, 1e15 - 0.5, 1e15, 1e16, 2.5),
            *(0.3, 1e21, float("nan"), float("inf"), -0.75, 123456789012345.6),
        ]
    )


async def test_the_database_builds_the_chain_text_of_rfc8785_or_leaves_the_row_to_python(
    pool: asyncpg.Pool,
) -> None:
    """verify lets PostgreSQL hash rows where its text is the chain's: on generated rows (every
    control character, non-BMP text, any double, times from year 1 to 9999), the SQL text must be
    rfc8785's bytes of the row's body wherever the database vouches for the row, and the rows it
    cannot vouch for must be left to Python (NULL), never judged."""
    await migrate_core(pool)
    await migrate(pool, "audit", MIGRATIONS)
    rng = random.Random(8785)
    lowest, highest = datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

    def when() -> datetime | None:
        if rng.random() < 0.1:
            return None
        at = lowest + (highest - lowest) * rng.random()
        return at.replace(microsecond=0) if rng.random() < 0.3 else at

    rows = []
    for n in range(4000):
        text = [_nasty_text(rng) if rng.random() > 0.1 else None for _ in range(14)]
        rows.append(
            (
                rng.choice([n + 1, n + 1, n + 1, rng.randint(1, 2**53 - 1), 2**53, 2**62]),
                rng.choice([2, 2, 2, 2, 2, 1]),
                *text[:3],
                *text[3:5],
                rng.choice([None, None, None, rng.randint(-(2**60), 2**60), rng.randint(1, 2**53 - 1)]),
                _nasty_float(rng),
                *text[5:14],
                uuid.uuid4(),
                uuid.uuid4(),
                rng.choice([None, uuid.uuid4()]),
                when() or lowest,
                when() or highest,
                when(),
            )
        )
    columns = (
        "seq", "hash_version", "kind", "reason", "proposed_value", "object_type", "record_id",
        "reverts_seq", "confidence", "field", "previous_value", "new_value", "source_system",
        "source_event_id", "detector", "mode", "approver", "policy_version", "proposal_id",
        "decision_id", "execution_id", "proposed_at", "decided_at", "executed_at",
    )  # fmt: skip
    async with pool.acquire() as conn:
        await conn.execute("SET TimeZone = 'Asia/Kathmandu'")  # the text must not depend on it
        # Shaped like the log, without its NOT NULL constraints (the text must hold for nulls too).
        await conn.execute("CREATE TEMP TABLE generated AS SELECT * FROM audit_entries WITH NO DATA")
        fixed = {"policy_hash": None, "rule_id": None, "decider": None, "prev_hash": "", "hash": ""}
        await conn.copy_records_to_table(
            "generated",
            columns=[*columns, *fixed],
            records=[(*r, *fixed.values()) for r in rows],
        )
        async with conn.transaction():
            await conn.execute("SET LOCAL extra_float_digits = 1")
            checked = await conn.fetch(
                f"SELECT *, {SQL_CANONICAL} AS text, {SQL_DOMAIN} AS vouched FROM generated"
            )
    vouched = left = 0
    for row in checked:
        try:
            expected = rfc8785.dumps(chain_body(row)).decode()
        except (rfc8785.CanonicalizationError, ValueError, OverflowError):
            # JCS refuses the row (an integer beyond 2**53, NaN) or Python cannot write its time
            # (year 1 or 9999 shifted out of range): never vouched for.
            expected = None
        if row["vouched"]:  # JCS-refused rows (expected None) must never be among these
            vouched += 1
            assert row["text"] == expected, dict(row)
        else:
            left += 1
    assert vouched > 500  # both paths are taken
    assert left > 500


def _nasty_outcome(rng: random.Random, template: Outcome) -> Outcome:
    """An outcome whose every text holds what COPY's text format must escape (tab, newline, carriage
    return, backslash, "\\N"), any other control character, non-BMP text, quotes; values of every
    JSON type; times at other offsets (seconds included)."""

    def text() -> str:
        return rng.choice([_nasty_text(rng), "\\N", "a\tb\nc\rd\\e", '"q"']) or "x"

    def value() -> PropertyValue:
        return rng.choice(
            [None, text(), rng.randint(-(2**53) + 1, 2**53 - 1), rng.random(), rng.choice([True, False])]
        )

    def when() -> datetime:
        zone = timezone(timedelta(seconds=rng.randint(-50_000, 50_000)))
        return (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.random() * 3e7)).astimezone(zone)

    changes = [
        FieldChange(field=f"{text()}-{n}", previous=value(), proposed=value())
        for n in range(rng.randint(1, 3))
    ]
    proposal = template.decision.proposal.model_copy(
        update={
            "proposal_id": uuid.uuid4(),
            "record_id": text(),
            "changes": changes,
            "confidence": rng.choice([rng.random(), 0.0, 1.0, 1e-5, 5e-324, 0.1]),
            "proposed_at": when(),
            "source": template.decision.proposal.source.model_copy(
                update={"system": text(), "event_id": text(), "detector": text(), "detector_version": text()}
            ),
        }
    )
    maybe = [None, text()]
    decided_by = Decider(
        kind="human",
        identity=text(),
        policy_version=rng.choice(maybe),
        policy_hash=rng.choice(maybe),
        rule_id=rng.choice(maybe),
    )
    decision = template.decision.model_copy(
        update={
            "proposal": proposal,
            "decision_id": uuid.uuid4(),
            "decided_by": decided_by,
            "decided_at": when(),
        }
    )
    executed = rng.random() < 0.7
    return Outcome(
        decision,
        rng.choice(list(AuditMode)),
        [(c.field, c.previous, value()) for c in changes],
        rng.choice([None, text()]),
        uuid.uuid4() if executed else None,
        when() if executed else None,
    )


def _template() -> Outcome:
    decision = approved_decision("template", {"city": (None, "Oslo")})
    return Outcome(decision, AuditMode.APPROVED, [], None)


async def test_rows_of_any_text_are_stored_exactly_as_hashed(pool: asyncpg.Pool) -> None:
    """The append streams rows in COPY's text format: every text, value and time must come back
    from PostgreSQL exactly as the outcome held it, and every row must verify (in the database and
    recomputed in Python) across several COPY messages and transactions."""
    await migrate_core(pool)
    await migrate(pool, "audit", MIGRATIONS)
    rng = random.Random(4180)
    template = _template()
    outcomes = [_nasty_outcome(rng, template) for _ in range(400)]
    for at in (0, 150):  # two transactions: the second continues the first's chain
        async with pool.acquire() as conn, conn.transaction():
            await append_outcomes(conn, outcomes[at : at + 150] if at == 0 else outcomes[at:])
    rows = await pool.fetch("SELECT * FROM audit_entries ORDER BY seq")
    expected = [(o, f) for o in outcomes for f in o.fields]
    assert len(rows) == len(expected) > 64 * 4  # more rows than a few COPY messages hold
    for row, (outcome, (field, previous, new)) in zip(rows, expected, strict=True):
        proposal, decided_by = outcome.decision.proposal, outcome.decision.decided_by
        proposed = {c.field: c.proposed for c in proposal.changes}[field]
        assert (row["record_id"], row["field"], row["reason"], row["mode"]) == (
            proposal.record_id,
            field,
            outcome.reason,
            outcome.mode.value,
        )
        values = [json.loads(row[c]) for c in ("previous_value", "new_value", "proposed_value")]
        assert values == [previous, new, proposed]
        assert [type(v) for v in values] == [type(previous), type(new), type(proposed)]
        assert (row["source_system"], row["source_event_id"], row["detector"]) == (
            proposal.source.system,
            proposal.source.event_id,
            f"{proposal.source.detector}@{proposal.source.detector_version}",
        )
        assert (row["approver"], row["policy_version"], row["policy_hash"], row["rule_id"]) == (
            decided_by.identity,
            decided_by.policy_version,
            decided_by.policy_hash,
            decided_by.rule_id,
        )
        assert row["confidence"] == proposal.confidence
        assert (row["proposed_at"], row["decided_at"], row["executed_at"]) == (
            proposal.proposed_at,
            outcome.decision.decided_at,
            outcome.executed_at,
        )
        assert (row["proposal_id"], row["execution_id"]) == (proposal.proposal_id, outcome.execution_id)
        assert row_hash(row) == row["hash"]
    for in_database in (True, False):
        report = await verify(pool, in_database=in_database)
        assert (report.ok, report.rows) == (True, len(expected)), report.problems[:5]


async def test_a_row_that_cannot_be_hashed_mid_copy_keeps_no_row_of_the_batch(pool: asyncpg.Pool) -> None:
    """Rows are sent while later ones are still being hashed: one that cannot be (a lone surrogate,
    which RFC 8785 refuses) after several COPY messages aborts the COPY; nothing of the batch is
    kept, the connection serves the next batch, and the chain continues intact."""
    await migrate_core(pool)
    await migrate(pool, "audit", MIGRATIONS)
    template = _template()
    good = [
        template._replace(
            fields=[(f"f{n}", None, n)], execution_id=uuid.uuid4(), executed_at=datetime.now(UTC)
        )
        for n in range(300)
    ]
    async with pool.acquire() as conn:
        async with conn.transaction():
            assert await append_outcomes(conn, good[:5]) == 5
        bad = [*good[5:250], template._replace(fields=[("f", None, 1)], reason="\ud800"), *good[250:]]
        with pytest.raises(rfc8785.CanonicalizationError):
            async with conn.transaction():
                await append_outcomes(conn, bad)
        assert await conn.fetchval("SELECT count(*) FROM audit_entries") == 5
        async with conn.transaction():
            assert await append_outcomes(conn, good[5:]) == 295
    report = await verify(pool)
    assert (report.ok, report.rows) == (True, 300), report.problems[:5]
