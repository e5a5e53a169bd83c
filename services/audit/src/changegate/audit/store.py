"""Appending to the audit log: one hash-chained row per executed field change."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from changegate.audit.chain import GENESIS, VALUE_COLUMNS, body_hash, to_column
from changegate.core.contracts import (
    AuditEntry,
    AuditMode,
    Decision,
    DecisionOutcome,
    Execution,
    ExecutionStatus,
)
from changegate.core.db import DbConn
from pydantic import AwareDatetime, TypeAdapter

_CHAIN_LOCK = zlib.crc32(b"audit-chain")  # appends are serialised: the chain is one sequence
_COLUMNS = list(AuditEntry.model_fields)
_JSON_COLUMNS = [i for i, c in enumerate(_COLUMNS) if c in VALUE_COLUMNS]
_MINUTE = timedelta(minutes=1)
_CHUNK = 100  # executions per COPY


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


_TIME = TypeAdapter(AwareDatetime)


def _json_time(value: datetime) -> str:
    """A timestamp's JSON form as pydantic writes it (the form the chain hashes)."""
    offset = value.utcoffset()
    if offset is None or offset % _MINUTE:
        return str(_TIME.dump_python(value, mode="json"))  # an unusual offset: pydantic's own form
    text = value.isoformat()
    return f"{text[:-6]}Z" if not offset else text


def _chained(execution: Execution, seq: int, prev_hash: str) -> Iterator[list[Any]]:
    """The rows of an applied execution's writes (values in ``_COLUMNS`` order, as the database
    takes them), hash-chained from ``prev_hash``. Built without a model per row: the columns the
    rows share are serialised once, and each row's JSON form (what the chain hashes, as
    AuditEntry.model_dump(mode="json") would give it) is theirs with the write's four fields."""
    if execution.status is not ExecutionStatus.APPLIED or not execution.writes:
        return
    decision = execution.decision
    proposal = decision.proposal
    by = decision.decided_by
    source = proposal.source
    object_type, detector = proposal.object_type.value, f"{source.detector}@{source.detector_version}"
    modified = decision.outcome is DecisionOutcome.APPROVED_WITH_CHANGES
    mode = (
        AuditMode.AUTO_APPLIED
        if by.kind == "policy"
        else AuditMode.APPROVED_WITH_CHANGES
        if modified
        else AuditMode.APPROVED
    ).value
    proposed = {c.field: c.proposed for c in proposal.changes} if modified else {}
    proposed_at, decided_at, executed_at = proposal.proposed_at, decision.decided_at, execution.executed_at
    tail = [
        source.system,
        source.event_id,
        detector,
        proposal.confidence,
        mode,
        by.identity,
        by.policy_version,
        by.policy_hash,
        by.rule_id,
        proposal.proposal_id,
        decision.decision_id,
        execution.execution_id,
        proposed_at,
        decided_at,
        executed_at,
    ]
    shared = {
        "object_type": object_type,
        "record_id": proposal.record_id,
        "source_system": source.system,
        "source_event_id": source.event_id,
        "detector": detector,
        "confidence": proposal.confidence,
        "mode": mode,
        "approver": by.identity,
        "policy_version": by.policy_version,
        "policy_hash": by.policy_hash,
        "rule_id": by.rule_id,
        "proposal_id": str(proposal.proposal_id),
        "decision_id": str(decision.decision_id),
        "execution_id": str(execution.execution_id),
        "proposed_at": _json_time(proposed_at),
        "decided_at": _json_time(decided_at),
        "executed_at": _json_time(executed_at),
    }
    for seq_n, write in enumerate(execution.writes, seq):
        body = shared.copy()
        # The write's values are JSON values: they serialise as themselves.
        body.update(seq=seq_n, field=write.field, previous_value=write.overwritten, new_value=write.new)
        proposed_value = proposed.get(write.field)
        if modified:  # the chain counts it only for a modified approval (chain.entry_hash)
            body["proposed_value"] = proposed_value
        digest = body_hash(body, prev_hash)
        yield [
            seq_n,
            object_type,
            proposal.record_id,
            write.field,
            write.overwritten,
            write.new,
            *tail,
            proposed_value,
            prev_hash,
            digest,
        ]
        prev_hash = digest


def entries_for(execution: Execution, start_seq: int, prev_hash: str) -> list[AuditEntry]:
    """The chained rows of one applied execution (none for conflicts, failures and no-ops)."""
    return [
        AuditEntry.model_validate(dict(zip(_COLUMNS, row, strict=True)))
        for row in _chained(execution, start_seq, prev_hash)
    ]


async def append_executions(conn: DbConn, executions: list[Execution]) -> int:
    """Append the rows of executions, chained in their order; call inside a transaction (the chain's
    lock is held until it ends). Returns rows written.

    The rows go in COPYs of ``_CHUNK`` executions each, and while PostgreSQL stores one chunk the
    next is hashed (the hashing is the costly part, and the database works in another process)."""
    if not any(e.status is ExecutionStatus.APPLIED and e.writes for e in executions):
        return 0
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _CHAIN_LOCK)
    last = await conn.fetchrow("SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1")
    start, prev = (last["seq"] + 1, last["hash"]) if last else (1, GENESIS)
    seq = start
    copying: asyncio.Task[str] | None = None
    try:
        for at in range(0, len(executions), _CHUNK):
            rows = []
            for n, execution in enumerate(executions[at : at + _CHUNK], 1):
                for row in _chained(execution, seq, prev):
                    for i in _JSON_COLUMNS:
                        row[i] = to_column(_COLUMNS[i], row[i])
                    rows.append(row)
                    seq, prev = seq + 1, row[-1]
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
