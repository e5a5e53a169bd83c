"""Appending to the audit log: one hash-chained row per executed field change."""

from __future__ import annotations

import asyncio
import json
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from changegate.audit.chain import GENESIS, HASH_VERSION, VALUE_COLUMNS, BodyTemplate, json_time
from changegate.core.contracts import (
    AuditEntry,
    AuditMode,
    Decision,
    DecisionOutcome,
    Execution,
    ExecutionStatus,
    Proposal,
)
from changegate.core.contracts.base import PropertyValue
from changegate.core.db import DbConn
from changegate.core.http import MAX_BIGINT

_CHAIN_LOCK = zlib.crc32(b"audit-chain")  # appends are serialised: the chain is one sequence
_COLUMNS = list(AuditEntry.model_fields)
_HASH = _COLUMNS.index("hash")
_CHUNK = 100  # outcomes per COPY
REVERTS_KEY = "reverts_seq"  # a revert proposal's evidence names the entry it reverts


async def record_decisions(conn: DbConn, decisions: list[Decision]) -> list[bool]:
    """Keep decisions as received, in one statement; for each, whether it was kept (False: already
    kept, or not kept). A supersession that arrives after its proposal was decided otherwise (here,
    or earlier in the same batch) is not kept: it came too late to retire anything, and the log must
    not say both."""
    retiring = [d.proposal.proposal_id for d in decisions if d.outcome is DecisionOutcome.SUPERSEDED]
    decided = set()
    if retiring:
        rows = await conn.fetch(
            "SELECT DISTINCT proposal_id FROM audit_decisions"
            " WHERE proposal_id = ANY($1::uuid[]) AND outcome <> 'superseded'",
            retiring,
        )
        decided = {r["proposal_id"] for r in rows}
    kept = []
    for decision in decisions:
        proposal_id = decision.proposal.proposal_id
        if decision.outcome is not DecisionOutcome.SUPERSEDED:
            decided.add(proposal_id)
        elif proposal_id in decided:
            continue
        kept.append(decision)
    rows = await conn.fetch(
        "INSERT INTO audit_decisions (decision_id, proposal_id, outcome, decided_by, decided_at, decision)"
        " SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[],"
        " $6::jsonb[])"
        " ON CONFLICT (decision_id) DO NOTHING RETURNING decision_id",
        [d.decision_id for d in kept],
        [d.proposal.proposal_id for d in kept],
        [d.outcome.value for d in kept],
        [d.decided_by.identity for d in kept],
        [d.decided_at for d in kept],
        [d.model_dump(mode="json") for d in kept],
    )
    inserted = {r["decision_id"] for r in rows}
    answers = []
    for decision in decisions:  # a decision twice in the batch: kept once
        answers.append(decision.decision_id in inserted)
        inserted.discard(decision.decision_id)
    return answers


async def record_decision(conn: DbConn, decision: Decision) -> bool:
    """Keep one decision as received; False if it is not kept (see ``record_decisions``)."""
    return (await record_decisions(conn, [decision]))[0]


@dataclass(frozen=True)
class Outcome:
    """What one decision or execution puts in the chain: a row per field, sharing the rest."""

    decision: Decision
    mode: AuditMode
    fields: list[tuple[str, PropertyValue, PropertyValue]]  # field, previous value, new value
    reason: str | None
    execution_id: uuid.UUID | None = None
    executed_at: datetime | None = None


def _decision_reason(decision: Decision) -> str:
    return f"{decision.explanation} ({decision.comment})" if decision.comment else decision.explanation


def execution_outcome(execution: Execution) -> Outcome | None:
    """An execution's rows: what it wrote (applied), or what it was to write and why it did not
    (conflict, failed, noop). None for an applied execution that wrote nothing."""
    decision = execution.decision
    if execution.status is ExecutionStatus.APPLIED:
        if not execution.writes:
            return None
        mode = (
            AuditMode.AUTO_APPLIED
            if decision.decided_by.kind == "policy"
            else AuditMode.APPROVED_WITH_CHANGES
            if decision.outcome is DecisionOutcome.APPROVED_WITH_CHANGES
            else AuditMode.APPROVED
        )
    else:
        mode = AuditMode(execution.status.value)
    if execution.writes:
        fields = [(w.field, w.overwritten, w.new) for w in execution.writes]
    else:
        fields = [(c.field, c.previous, c.proposed) for c in decision.final_changes]
    reason = execution.error or _decision_reason(decision)
    proposal = decision.proposal
    if execution.merged_into:
        reason = f"{reason}; merged {', '.join(proposal.other_record_ids)} into {execution.merged_into}"
    return Outcome(decision, mode, fields, reason, execution.execution_id, execution.executed_at)


def decision_outcome(decision: Decision) -> Outcome | None:
    """A decision that ends its proposal without execution (rejected, expired, superseded): a row
    per proposed change, its new value the one proposed. None for decisions that execute (their
    rows come with the execution)."""
    if decision.outcome.executes:
        return None
    fields = [(c.field, c.previous, c.proposed) for c in decision.proposal.changes]
    return Outcome(decision, AuditMode(decision.outcome.value), fields, _decision_reason(decision))


def _reverts(proposal: Proposal) -> int | None:
    seq = proposal.evidence.get(REVERTS_KEY)
    return seq if type(seq) is int and 0 < seq <= MAX_BIGINT else None


# What differs between the rows of one outcome (in key order, as BodyTemplate takes them).
_ROW_FIELDS = ("field", "new_value", "prev_hash", "previous_value", "proposed_value", "seq")
_AT = {name: _COLUMNS.index(name) for name in _ROW_FIELDS}


def _chained(outcome: Outcome, seq: int, prev_hash: str) -> Iterator[list[Any]]:
    """An outcome's rows (values in ``_COLUMNS`` order, value columns as the JSON text the database
    keeps), hash-chained from ``prev_hash``. Built without a model or a dict per row: the members
    the rows share are serialised once (``BodyTemplate``); a row adds its own and its hash."""
    decision = outcome.decision
    proposal = decision.proposal
    by = decision.decided_by
    source = proposal.source
    proposed = {c.field: c.proposed for c in proposal.changes}
    shared: dict[str, Any] = {
        "hash_version": HASH_VERSION,
        "object_type": proposal.object_type.value,
        "record_id": proposal.record_id,
        "kind": proposal.kind.value,
        "source_system": source.system,
        "source_event_id": source.event_id,
        "detector": f"{source.detector}@{source.detector_version}",
        "confidence": proposal.confidence,
        "mode": outcome.mode.value,
        "decider": by.kind,
        "approver": by.identity,
        "policy_version": by.policy_version,
        "policy_hash": by.policy_hash,
        "rule_id": by.rule_id,
        "reason": outcome.reason,
        "proposal_id": str(proposal.proposal_id),
        "decision_id": str(decision.decision_id),
        "execution_id": str(outcome.execution_id) if outcome.execution_id else None,
        "reverts_seq": _reverts(proposal),
        "proposed_at": json_time(proposal.proposed_at),
        "decided_at": json_time(decision.decided_at),
        "executed_at": json_time(outcome.executed_at) if outcome.executed_at else None,
    }
    template = BodyTemplate(shared, _ROW_FIELDS)
    # The COPY takes times as they are (ids as text: asyncpg parses those in C, and reads a UUID's
    # bytes through a Python property).
    native = shared | {
        "proposed_at": proposal.proposed_at,
        "decided_at": decision.decided_at,
        "executed_at": outcome.executed_at,
    }
    base = [native.get(c) for c in _COLUMNS]
    dumps = json.dumps
    for seq_n, (field, previous, new) in enumerate(outcome.fields, seq):
        # Values are JSON scalars: their text is what the database keeps and the chain hashes.
        new_text, previous_text = dumps(new), dumps(previous)
        proposed_text = dumps(proposed.get(field))
        digest = template.hash((field, new_text, prev_hash, previous_text, proposed_text, seq_n))
        row = base.copy()
        row[_AT["field"]], row[_AT["new_value"]], row[_AT["prev_hash"]] = field, new_text, prev_hash
        row[_AT["previous_value"]], row[_AT["proposed_value"]] = previous_text, proposed_text
        row[_AT["seq"]], row[_HASH] = seq_n, digest
        yield row
        prev_hash = digest


def entries_for(item: Execution | Decision, start_seq: int, prev_hash: str) -> list[AuditEntry]:
    """The chained rows of one execution or decision."""
    outcome = execution_outcome(item) if isinstance(item, Execution) else decision_outcome(item)
    if outcome is None:
        return []
    rows = [dict(zip(_COLUMNS, row, strict=True)) for row in _chained(outcome, start_seq, prev_hash)]
    for row in rows:
        for name in VALUE_COLUMNS:
            row[name] = json.loads(row[name])
    return [AuditEntry.model_validate(row) for row in rows]


async def append_executions(conn: DbConn, executions: list[Execution]) -> int:
    """Append the rows of executions (every status), chained in their order; call inside a
    transaction. Returns rows written."""
    return await append_outcomes(conn, [o for e in executions if (o := execution_outcome(e))])


async def append_decisions(conn: DbConn, decisions: list[Decision]) -> int:
    """Append the rows of decisions that end without execution; call inside a transaction."""
    return await append_outcomes(conn, [o for d in decisions if (o := decision_outcome(d))])


async def append_outcomes(conn: DbConn, outcomes: list[Outcome]) -> int:
    """Append the rows of outcomes, chained in their order; call inside a transaction (the chain's
    lock is held until it ends). Returns rows written.

    The rows go in COPYs of ``_CHUNK`` outcomes each, and while PostgreSQL stores one chunk the
    next is hashed (the hashing is the costly part, and the database works in another process)."""
    if not outcomes:
        return 0
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _CHAIN_LOCK)
    last = await conn.fetchrow("SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1")
    start, prev = (last["seq"] + 1, last["hash"]) if last else (1, GENESIS)
    seq = start
    copying: asyncio.Task[str] | None = None
    try:
        for at in range(0, len(outcomes), _CHUNK):
            rows = []
            for n, outcome in enumerate(outcomes[at : at + _CHUNK], 1):
                for row in _chained(outcome, seq, prev):
                    rows.append(row)
                    seq, prev = seq + 1, row[_HASH]
                if copying is not None and n % 10 == 0:
                    await asyncio.sleep(0)  # the COPY before this chunk moves on meanwhile
            if copying is not None:
                await copying
                copying = None
            if rows:
                copying = asyncio.create_task(
                    conn.copy_records_to_table("audit_entries", columns=_COLUMNS, records=rows)
                )
        if copying is not None:
            await copying
    except BaseException:
        if copying is not None and not copying.done():
            copying.cancel()
            await asyncio.gather(copying, return_exceptions=True)
        raise
    return seq - start


async def append_execution(conn: DbConn, execution: Execution) -> int:
    """Append the rows of one execution; call inside a transaction. Returns rows written."""
    return await append_executions(conn, [execution])
