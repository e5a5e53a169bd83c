"""Appending to the audit log: one hash-chained row per executed field change."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
import zlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, NamedTuple

from changegate.audit.chain import (
    GENESIS,
    HASH_VERSION,
    VALUE_COLUMNS,
    canonical_hash,
    json_text,
    json_time,
)
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


class Outcome(NamedTuple):
    """What one decision or execution puts in the chain: a row per field, sharing the rest. (A
    tuple: one is built per row appended, and a tuple is built fastest.)"""

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


# A row's own columns; the others its outcome's rows share. The COPY names them in this order, so
# a row's line is its own columns then one text shared by its outcome's rows.
_OWN = ("seq", "field", "previous_value", "new_value", "proposed_value", "prev_hash", "hash")
_SHARED = (
    "hash_version", "object_type", "record_id", "kind", "source_system", "source_event_id", "detector",
    "confidence", "mode", "decider", "approver", "policy_version", "policy_hash", "rule_id", "reason",
    "proposal_id", "decision_id", "execution_id", "reverts_seq", "proposed_at", "decided_at", "executed_at",
)  # fmt: skip
if sorted(_OWN + _SHARED) != sorted(_COLUMNS):
    raise RuntimeError("_OWN and _SHARED must name every column of the log once")
_COPY_COLUMNS = [*_OWN, *_SHARED]
_ROW = "\x00"  # where a row's own members go (never in a canonical text: RFC 8785 escapes it)
_ESCAPE = json.encoder.encode_basestring  # RFC 8785's string escapes (no ASCII escaping)
_ASCII = json.encoder.encode_basestring_ascii  # what json.dumps does with a string
_VERSION_TEXT = json_text(HASH_VERSION)
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_FLUSH_ROWS = 64  # rows per COPY data message: PostgreSQL stores them while the next are hashed


def _text(value: Any) -> str:
    """A member's RFC 8785 text (``json_text``, the common case first)."""
    return _ESCAPE(value) if type(value) is str else json_text(value)


def _json(value: PropertyValue) -> str:
    """``json.dumps(value)`` (the text a value column keeps), strings and nulls without its detour."""
    if type(value) is str:
        return _ASCII(value)
    return "null" if value is None else json.dumps(value)


def _quoted(text: str | None) -> str:
    """A time (``json_time``) or a UUID's text as a JSON string: nothing in them needs escaping."""
    return "null" if text is None else f'"{text}"'


def _copy_text(value: Any) -> str:
    """A value as COPY's text format reads it: NULL as \\N, a backslash, tab, newline or carriage
    return escaped; numbers as Python prints them (a float's shortest round-trip digits, which
    PostgreSQL reads back to the same double); times as ``json_time`` writes them (UTC)."""
    if value is None:
        return "\\N"
    text = value if type(value) is str else str(value)
    if _COPY_SPECIAL.search(text) is None:
        return text
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_shared(values: list[Any]) -> str:
    """The columns an outcome's rows share (``_SHARED``) as COPY's text (tab-separated)."""
    line = "\t".join([v if type(v) is str else "\\N" if v is None else str(v) for v in values])
    # Usually nothing needs escaping: no backslash but those of the NULLs, no tab but the separators.
    if (
        line.count("\\") == values.count(None)
        and line.count("\t") == len(values) - 1
        and "\n" not in line
        and "\r" not in line
    ):
        return line
    return "\t".join([_copy_text(v) for v in values])


def _chained(outcome: Outcome, seq: int, prev_hash: str) -> tuple[list[Any], list[tuple[Any, ...]]]:
    """An outcome's rows, hash-chained from ``prev_hash``: the columns they share (``_SHARED``, in
    that order; times as ``json_time`` text, ids as text) and each row's own (``_OWN``; value
    columns as the JSON text the database keeps and the chain hashes). Built without a model or a
    dict per row: the body's members the rows share are written once, in RFC 8785's key order
    (``CHAIN_FIELDS`` sorted; tests compare every row's hash with ``rfc8785`` and with what
    ``verify`` recomputes), around the places of a row's own (field, values, prev_hash, seq)."""
    decision, mode, fields, reason, execution_uuid, executed = outcome
    proposal = decision.proposal
    by = decision.decided_by
    source = proposal.source
    execution_id = None if execution_uuid is None else str(execution_uuid)
    proposal_id, decision_id = str(proposal.proposal_id), str(decision.decision_id)
    proposed_at, decided_at = json_time(proposal.proposed_at), json_time(decision.decided_at)
    executed_at = None if executed is None else json_time(executed)
    object_type, kind, mode_name = proposal.object_type.value, proposal.kind.value, mode.value
    record_id, confidence, reverts = proposal.record_id, proposal.confidence, _reverts(proposal)
    source_system, source_event_id = source.system, source.event_id
    detector = f"{source.detector}@{source.detector_version}"
    decider, approver, policy_version, policy_hash, rule_id = (
        by.kind, by.identity, by.policy_version, by.policy_hash, by.rule_id
    )  # fmt: skip
    shared = [
        HASH_VERSION, object_type, record_id, kind, source_system, source_event_id, detector,
        confidence, mode_name, decider, approver, policy_version, policy_hash, rule_id, reason,
        proposal_id, decision_id, execution_id, reverts, proposed_at, decided_at, executed_at,
    ]  # fmt: skip
    s0, s1, s2, s3, s4, s5, s6 = (
        f'{{"approver":{_text(approver)},"confidence":{json_text(confidence)}'
        f',"decided_at":"{decided_at}","decider":{_text(decider)},"decision_id":"{decision_id}"'
        f',"detector":{_text(detector)},"executed_at":{_quoted(executed_at)}'
        f',"execution_id":{_quoted(execution_id)},"field":{_ROW},"hash_version":{_VERSION_TEXT}'
        f',"kind":{_text(kind)},"mode":{_text(mode_name)},"new_value":{_ROW}'
        f',"object_type":{_text(object_type)},"policy_hash":{_text(policy_hash)}'
        f',"policy_version":{_text(policy_version)},"prev_hash":{_ROW},"previous_value":{_ROW}'
        f',"proposal_id":"{proposal_id}","proposed_at":"{proposed_at}","proposed_value":{_ROW}'
        f',"reason":{_text(reason)},"record_id":{_text(record_id)}'
        f',"reverts_seq":{_text(reverts)},"rule_id":{_text(rule_id)},"seq":{_ROW}'
        f',"source_event_id":{_text(source_event_id)},"source_system":{_text(source_system)}}}'
    ).split(_ROW)
    escape, sha256 = _ESCAPE, hashlib.sha256
    proposed = {c.field: c.proposed for c in proposal.changes}
    rows = []
    for seq_n, (field, previous, new) in enumerate(fields, seq):
        # Values are JSON scalars: their text is what the database keeps and the chain hashes.
        new_text, previous_text, proposed_text = _json(new), _json(previous), _json(proposed.get(field))
        text = (
            f"{s0}{_text(field)}{s1}{escape(new_text)}{s2}{_text(prev_hash)}{s3}{escape(previous_text)}"
            f"{s4}{escape(proposed_text)}{s5}{_text(seq_n)}{s6}"
        )
        try:
            digest = sha256(text.encode()).hexdigest()
        except UnicodeEncodeError:  # a lone surrogate: the reference refuses it, with its own error
            digest = canonical_hash(json.loads(text))
        rows.append((seq_n, field, previous_text, new_text, proposed_text, prev_hash, digest))
        prev_hash = digest
    return shared, rows


def entries_for(item: Execution | Decision, start_seq: int, prev_hash: str) -> list[AuditEntry]:
    """The chained rows of one execution or decision."""
    outcome = execution_outcome(item) if isinstance(item, Execution) else decision_outcome(item)
    if outcome is None:
        return []
    shared, rows = _chained(outcome, start_seq, prev_hash)
    entries = []
    for own in rows:
        row = dict(zip(_SHARED, shared, strict=True)) | dict(zip(_OWN, own, strict=True))
        for name in VALUE_COLUMNS:
            row[name] = json.loads(row[name])
        entries.append(AuditEntry.model_validate(row))
    return entries


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

    One COPY (text format) per call, its data sent every ``_FLUSH_ROWS`` rows as they are hashed:
    PostgreSQL stores a message's rows (in its own process) while the next are hashed here, and a
    COPY is set up once. Anything raised while hashing aborts the COPY: no row of the call is kept."""
    if not outcomes:
        return 0
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _CHAIN_LOCK)
    last = await conn.fetchrow("SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1")
    start, prev = (last["seq"] + 1, last["hash"]) if last else (1, GENESIS)
    seq = start

    async def data() -> AsyncIterator[bytes]:
        nonlocal seq, prev
        lines: list[str] = []
        for outcome in outcomes:
            shared, rows = _chained(outcome, seq, prev)
            tail = _copy_shared(shared)
            for n, field, *texts, prev_hash, digest in rows:
                # The value texts are JSON (ASCII, control characters escaped): only a backslash
                # needs COPY's escape.
                previous_text, new_text, proposed_text = (
                    t.replace("\\", "\\\\") if "\\" in t else t for t in texts
                )
                lines.append(
                    f"{n}\t{_copy_text(field)}\t{previous_text}\t{new_text}\t{proposed_text}"
                    f"\t{_copy_text(prev_hash)}\t{digest}\t{tail}\n"
                )
                seq, prev = n + 1, digest
            if len(lines) >= _FLUSH_ROWS:
                yield "".join(lines).encode()
                lines = []
        if lines:
            yield "".join(lines).encode()

    await conn.copy_to_table("audit_entries", source=data(), columns=_COPY_COLUMNS, format="text")
    return seq - start


async def append_execution(conn: DbConn, execution: Execution) -> int:
    """Append the rows of one execution; call inside a transaction. Returns rows written."""
    return await append_executions(conn, [execution])
