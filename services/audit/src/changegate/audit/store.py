"""Appending to the audit log: one hash-chained row per executed field change."""

from __future__ import annotations

import zlib

from changegate.audit.chain import GENESIS, entry_hash, to_column
from changegate.core.contracts import (
    AuditEntry,
    AuditMode,
    Decision,
    DecisionOutcome,
    Execution,
    ExecutionStatus,
)
from changegate.core.db import DbConn

_CHAIN_LOCK = zlib.crc32(b"audit-chain")  # appends are serialised: the chain is one sequence
_COLUMNS = list(AuditEntry.model_fields)


async def record_decision(conn: DbConn, decision: Decision) -> bool:
    """Keep a decision as received; False if it is not kept. A supersession that arrives after the
    proposal was already decided otherwise is not kept: it came too late to retire anything, and
    the log must not say both."""
    if decision.outcome is DecisionOutcome.SUPERSEDED and await conn.fetchval(
        "SELECT 1 FROM audit_decisions WHERE proposal_id = $1 AND outcome <> 'superseded' LIMIT 1",
        decision.proposal.proposal_id,
    ):
        return False
    status: str = await conn.execute(
        "INSERT INTO audit_decisions (decision_id, proposal_id, outcome, decided_by, decided_at, decision)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (decision_id) DO NOTHING",
        decision.decision_id,
        decision.proposal.proposal_id,
        decision.outcome.value,
        decision.decided_by.identity,
        decision.decided_at,
        decision.model_dump(mode="json"),
    )
    return status.endswith(" 1")


def entries_for(execution: Execution, start_seq: int, prev_hash: str) -> list[AuditEntry]:
    """The chained rows of one applied execution (none for conflicts, failures and no-ops)."""
    if execution.status is not ExecutionStatus.APPLIED:
        return []
    decision = execution.decision
    proposal = decision.proposal
    by = decision.decided_by
    proposed = {c.field: c.proposed for c in proposal.changes}
    modified = decision.outcome is DecisionOutcome.APPROVED_WITH_CHANGES
    mode = (
        AuditMode.AUTO_APPLIED
        if by.kind == "policy"
        else AuditMode.APPROVED_WITH_CHANGES
        if modified
        else AuditMode.APPROVED
    )
    entries = []
    for i, write in enumerate(execution.writes):
        draft = AuditEntry(
            seq=start_seq + i,
            object_type=proposal.object_type,
            record_id=proposal.record_id,
            field=write.field,
            previous_value=write.overwritten,
            new_value=write.new,
            source_system=proposal.source.system,
            source_event_id=proposal.source.event_id,
            detector=f"{proposal.source.detector}@{proposal.source.detector_version}",
            confidence=proposal.confidence,
            mode=mode,
            proposed_value=proposed.get(write.field) if modified else None,
            approver=by.identity,
            policy_version=by.policy_version,
            policy_hash=by.policy_hash,
            rule_id=by.rule_id,
            proposal_id=proposal.proposal_id,
            decision_id=decision.decision_id,
            execution_id=execution.execution_id,
            proposed_at=proposal.proposed_at,
            decided_at=decision.decided_at,
            executed_at=execution.executed_at,
            prev_hash=prev_hash,
            hash="",
        )
        digest = entry_hash(draft.model_dump(mode="json"), prev_hash)
        entries.append(draft.model_copy(update={"hash": digest}))
        prev_hash = digest
    return entries


async def append_execution(conn: DbConn, execution: Execution) -> int:
    """Append the rows of an execution; call inside a transaction. Returns rows written."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _CHAIN_LOCK)
    last = await conn.fetchrow("SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1")
    start, prev = (last["seq"] + 1, last["hash"]) if last else (1, GENESIS)
    entries = entries_for(execution, start, prev)
    if entries:
        placeholders = ", ".join(f"${i + 1}" for i in range(len(_COLUMNS)))
        await conn.executemany(
            f"INSERT INTO audit_entries ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
            [[to_column(c, getattr(e, c)) for c in _COLUMNS] for e in entries],
        )
    return len(entries)
