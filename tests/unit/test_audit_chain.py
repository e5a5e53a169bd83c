"""The audit log's rows and their hash chain, built from executions without a database."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from changegate.audit.chain import (
    CHAIN_FIELDS,
    GENESIS,
    LEGACY_FIELDS,
    VALUE_COLUMNS,
    VerifyReport,
    canonical_hash,
    entry_hash,
    json_time,
    parse_head,
    row_hash,
    row_to_entry,
    to_column,
    verify,
)
from changegate.audit.store import _OWN, _SHARED, REVERTS_KEY, Outcome, _chained, entries_for
from changegate.core import canonical
from changegate.core.contracts import (
    AuditEntry,
    AuditMode,
    Decider,
    Decision,
    DecisionOutcome,
    Execution,
    ExecutionStatus,
    FieldChange,
    FieldWrite,
    Proposal,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Version 2 hashes every field (prev_hash is given on its own); version 1 did not know the newer
# ones and hashed proposed_value only on a modified approval (its own tests below).
HASHED_FIELDS = [f for f in AuditEntry.model_fields if f not in ("hash", "prev_hash")]


@pytest.fixture
def two_field_execution(
    make_proposal: Callable[..., Proposal],
    make_decision: Callable[..., Decision],
    make_execution: Callable[..., Execution],
) -> Execution:
    proposal = make_proposal(
        changes=[
            FieldChange(field="city", previous=None, proposed="Berlin"),
            FieldChange(field="jobtitle", previous="", proposed="VP Sales"),
        ],
        confidence=0.91,
    )
    decision = make_decision(proposal)
    return make_execution(
        decision,
        writes=[
            FieldWrite(field="city", expected=None, overwritten=None, new="Berlin"),
            FieldWrite(field="jobtitle", expected="", overwritten="", new="VP Sales"),
        ],
    )


def _recomputed(entry: AuditEntry) -> str:
    return entry_hash(entry.model_dump(mode="json"), entry.prev_hash)


# --- rows of an execution -------------------------------------------------------------------------


def test_one_row_per_write_of_an_applied_execution(two_field_execution: Execution) -> None:
    entries = entries_for(two_field_execution, start_seq=12, prev_hash="f" * 64)

    assert [e.seq for e in entries] == [12, 13]
    assert [(e.field, e.previous_value, e.new_value) for e in entries] == [
        ("city", None, "Berlin"),
        ("jobtitle", "", "VP Sales"),
    ]
    decision = two_field_execution.decision
    proposal = decision.proposal
    for e in entries:
        assert e.object_type is proposal.object_type
        assert e.record_id == "hs-contact-1001"
        assert e.source_system == "clay"
        assert e.source_event_id == "clay-run-42:row-7"
        assert e.detector == "enrichment@0.1.0"
        assert e.confidence == 0.91
        assert e.proposal_id == proposal.proposal_id
        assert e.decision_id == decision.decision_id
        assert e.execution_id == two_field_execution.execution_id
        assert e.proposed_at == proposal.proposed_at
        assert e.decided_at == decision.decided_at
        assert e.executed_at == two_field_execution.executed_at


def test_rows_are_chained(two_field_execution: Execution) -> None:
    first, second = entries_for(two_field_execution, start_seq=1, prev_hash=GENESIS)

    assert first.prev_hash == GENESIS == ""
    assert first.hash == _recomputed(first)
    assert second.prev_hash == first.hash
    assert second.hash == _recomputed(second)
    assert len(first.hash) == 64
    assert first.hash != second.hash


def test_chain_continues_from_the_given_previous_hash(two_field_execution: Execution) -> None:
    from_genesis = entries_for(two_field_execution, 1, GENESIS)
    continued = entries_for(two_field_execution, 1, "e" * 64)
    assert continued[0].prev_hash == "e" * 64
    assert continued[0].hash != from_genesis[0].hash
    assert continued[1].hash != from_genesis[1].hash


def test_rows_are_deterministic(two_field_execution: Execution) -> None:
    assert entries_for(two_field_execution, 5, "d" * 64) == entries_for(two_field_execution, 5, "d" * 64)


def test_previous_value_is_what_was_actually_overwritten(
    make_decision: Callable[..., Decision], make_execution: Callable[..., Execution]
) -> None:
    execution = make_execution(
        make_decision(),
        writes=[FieldWrite(field="jobtitle", expected=None, overwritten="", new="VP Sales")],
    )
    (entry,) = entries_for(execution, 1, GENESIS)
    assert entry.previous_value == ""
    assert entry.new_value == "VP Sales"


@pytest.mark.parametrize("status", [ExecutionStatus.CONFLICT, ExecutionStatus.FAILED, ExecutionStatus.NOOP])
def test_unapplied_executions_are_chained_with_their_reason(
    two_field_execution: Execution, make_execution: Callable[..., Execution], status: ExecutionStatus
) -> None:
    execution = make_execution(
        two_field_execution.decision, status=status, writes=two_field_execution.writes, error="boom"
    )
    entries = entries_for(execution, 1, GENESIS)
    assert [(e.field, e.mode.value, e.reason, e.mode.applied) for e in entries] == [
        ("city", status.value, "boom", False),
        ("jobtitle", status.value, "boom", False),
    ]
    assert {e.execution_id for e in entries} == {execution.execution_id}
    assert entries[1].prev_hash == entries[0].hash == _recomputed(entries[0])


def test_a_failed_execution_without_writes_names_the_changes_it_was_to_make(
    two_field_execution: Execution, make_execution: Callable[..., Execution]
) -> None:
    execution = make_execution(
        two_field_execution.decision, status=ExecutionStatus.FAILED, writes=[], error="contact gone"
    )
    entries = entries_for(execution, 1, GENESIS)
    assert [(e.field, e.previous_value, e.new_value, e.mode) for e in entries] == [
        ("city", None, "Berlin", AuditMode.FAILED),
        ("jobtitle", "", "VP Sales", AuditMode.FAILED),
    ]


@pytest.mark.parametrize(
    "outcome", [DecisionOutcome.REJECTED, DecisionOutcome.EXPIRED, DecisionOutcome.SUPERSEDED]
)
def test_decisions_that_end_a_proposal_are_chained_with_the_eight_fields(
    make_proposal: Callable[..., Proposal],
    make_decision: Callable[..., Decision],
    human_decider: Decider,
    outcome: DecisionOutcome,
) -> None:
    proposal = make_proposal(confidence=0.55)
    decision = make_decision(
        proposal, outcome=outcome, decided_by=human_decider, final_changes=[]
    ).model_copy(update={"explanation": "wrong person", "comment": "checked LinkedIn"})
    (entry,) = entries_for(decision, 1, GENESIS)
    change = proposal.changes[0]
    assert (entry.field, entry.previous_value, entry.new_value, entry.proposed_value) == (
        change.field,
        change.previous,
        change.proposed,
        change.proposed,
    )
    assert (entry.source_system, entry.confidence, entry.decider, entry.approver) == (
        "clay",
        0.55,
        "human",
        "alice@example.com",
    )
    assert (entry.mode.value, entry.reason, entry.mode.applied) == (
        outcome.value,
        "wrong person (checked LinkedIn)",
        False,
    )
    assert (entry.proposal_id, entry.decision_id) == (proposal.proposal_id, decision.decision_id)
    assert (entry.execution_id, entry.executed_at, entry.decided_at) == (None, None, decision.decided_at)
    assert entry.hash == _recomputed(entry)


def test_decisions_that_execute_are_chained_with_their_execution(
    make_decision: Callable[..., Decision],
) -> None:
    assert entries_for(make_decision(), 1, GENESIS) == []


def test_applied_without_writes_gives_no_rows(make_execution: Callable[..., Execution]) -> None:
    assert entries_for(make_execution(writes=[]), 1, GENESIS) == []


def test_policy_decision_is_auto_applied_with_policy_identity(
    two_field_execution: Execution, policy_decider: Decider
) -> None:
    assert two_field_execution.decision.decided_by == policy_decider
    for e in entries_for(two_field_execution, 1, GENESIS):
        assert e.mode is AuditMode.AUTO_APPLIED
        assert e.approver == "policy:2026-11-24.1"
        assert e.policy_version == "2026-11-24.1"
        assert e.policy_hash == "a" * 64
        assert e.rule_id == "enrichment-fill-empty"


@pytest.mark.parametrize("outcome", [DecisionOutcome.APPROVED])
def test_human_decision_is_approved_with_the_reviewer_identity(
    make_proposal: Callable[..., Proposal],
    make_decision: Callable[..., Decision],
    make_execution: Callable[..., Execution],
    human_decider: Decider,
    outcome: DecisionOutcome,
) -> None:
    decision = make_decision(make_proposal(), outcome=outcome, decided_by=human_decider)
    (entry,) = entries_for(make_execution(decision), 1, GENESIS)
    assert entry.mode is AuditMode.APPROVED
    assert entry.approver == "alice@example.com"
    assert (entry.policy_version, entry.policy_hash, entry.rule_id) == (None, None, None)
    assert entry.proposed_value == entry.new_value == decision.proposal.changes[0].proposed


def test_a_modified_approval_is_its_own_mode_with_the_value_first_proposed(
    make_proposal: Callable[..., Proposal],
    make_decision: Callable[..., Decision],
    make_execution: Callable[..., Execution],
    human_decider: Decider,
) -> None:
    proposal = make_proposal()
    first = proposal.changes[0]
    edited = [first.model_copy(update={"proposed": "Head of Data"})]
    decision = make_decision(
        proposal, outcome=DecisionOutcome.APPROVED_WITH_CHANGES, decided_by=human_decider
    ).model_copy(update={"final_changes": edited})
    (entry,) = entries_for(make_execution(decision), 1, GENESIS)
    assert entry.mode is AuditMode.APPROVED_WITH_CHANGES
    assert (entry.proposed_value, entry.new_value) == (first.proposed, "Head of Data")
    # The value first proposed is part of the row's hash: changing it breaks the chain.
    fields = entry.model_dump(mode="json")
    assert entry_hash(fields, GENESIS) == entry.hash
    assert entry_hash({**fields, "proposed_value": "something else"}, GENESIS) != entry.hash


def _legacy(entry: AuditEntry, prev_hash: str = GENESIS) -> AuditEntry:
    """The entry as version 1 wrote it (its fields then, hashed as then: the code of that time)."""
    fields = entry.model_dump(mode="json")
    body = {k: fields[k] for k in LEGACY_FIELDS}
    if fields["mode"] == "approved_with_changes":
        body["proposed_value"] = fields["proposed_value"]
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(f"{text}|{prev_hash}".encode()).hexdigest()
    newer = {"kind": None, "decider": None, "reason": None, "reverts_seq": None}
    return entry.model_copy(update={**newer, "hash_version": 1, "prev_hash": prev_hash, "hash": digest})


def test_version_1_rows_verify_as_they_were_written(
    make_proposal: Callable[..., Proposal],
    make_decision: Callable[..., Decision],
    make_execution: Callable[..., Execution],
    human_decider: Decider,
) -> None:
    decision = make_decision(make_proposal(), outcome=DecisionOutcome.APPROVED, decided_by=human_decider)
    (entry,) = entries_for(make_execution(decision), 1, GENESIS)
    old = _legacy(entry)
    fields = old.model_dump(mode="json")
    # Version 1 counted the proposed value only on a modified approval.
    assert entry_hash(fields, GENESIS) == old.hash == entry_hash({**fields, "proposed_value": "x"}, GENESIS)
    assert entry_hash({**fields, "new_value": "x"}, GENESIS) != old.hash
    assert row_hash(_row(old)) == old.hash


def test_version_2_counts_the_proposed_value_always(two_field_execution: Execution) -> None:
    entry = entries_for(two_field_execution, 1, GENESIS)[0]
    assert entry.hash_version == 2
    assert entry_hash({**entry.model_dump(mode="json"), "proposed_value": "x"}, GENESIS) != entry.hash


# --- the hash ------------------------------------------------------------------------------------


def _changed(value: Any) -> Any:
    if value is None:
        return "now set"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2
    if isinstance(value, str):
        return value[:-1] + ("0" if value[-1:] != "0" else "1")
    raise AssertionError(f"no change rule for {value!r}")


def test_version_2_hash_is_sha256_of_the_rfc8785_form_of_the_row_with_values_as_json_text(
    two_field_execution: Execution,
) -> None:
    entry = entries_for(two_field_execution, 3, "c" * 64)[1]
    body = {k: v for k, v in entry.model_dump(mode="json").items() if k != "hash"}
    for name in VALUE_COLUMNS:
        body[name] = json.dumps(body[name])
    assert body["new_value"] == '"VP Sales"'
    assert entry.hash == hashlib.sha256(rfc8785.dumps(body)).hexdigest()
    assert row_hash(_row(entry)) == entry.hash


def test_version_1_hash_is_sha256_of_sorted_json_and_previous_hash() -> None:
    fields: dict[str, Any] = dict.fromkeys(LEGACY_FIELDS, 1)
    fields |= {"hash": "ignored", "prev_hash": "ignored too", "hash_version": 1, "reason": "ignored"}
    text = ",".join(f'"{k}":1' for k in sorted(LEGACY_FIELDS))
    assert entry_hash(fields, "prev") == hashlib.sha256(f"{{{text}}}|prev".encode()).hexdigest()


def test_the_chain_body_is_canonical_as_rfc8785_writes_it(two_field_execution: Execution) -> None:
    """core.canonical (fast) is checked against rfc8785 on generated values in test_canonical."""
    for entry in entries_for(two_field_execution, 1, GENESIS):
        body = {k: v for k, v in _row(entry).items() if k != "hash"}
        body |= {k: str(body[k]) for k in ("proposal_id", "decision_id", "execution_id")}
        body |= {k: entry.model_dump(mode="json")[k] for k in ("proposed_at", "decided_at", "executed_at")}
        assert canonical.dumps(body) == rfc8785.dumps(body)
        assert hashlib.sha256(rfc8785.dumps(body)).hexdigest() == entry.hash


def test_entry_hash_ignores_stored_hashes_but_not_the_previous_hash(two_field_execution: Execution) -> None:
    entry = entries_for(two_field_execution, 1, GENESIS)[0]
    body = entry.model_dump(mode="json")
    assert entry_hash({**body, "hash": "x", "prev_hash": "y"}, entry.prev_hash) == entry.hash
    assert entry_hash(body, "0" * 64) != entry.hash


@pytest.mark.parametrize("field", HASHED_FIELDS)
def test_entry_hash_changes_when_any_field_changes(two_field_execution: Execution, field: str) -> None:
    entry = entries_for(two_field_execution, 1, GENESIS)[0]
    body = entry.model_dump(mode="json")
    altered = {**body, field: _changed(body[field])}
    assert altered[field] != body[field]
    assert entry_hash(altered, entry.prev_hash) != entry.hash


@pytest.mark.parametrize("field", HASHED_FIELDS)
def test_entry_hash_changes_when_a_field_is_dropped(two_field_execution: Execution, field: str) -> None:
    entry = entries_for(two_field_execution, 1, GENESIS)[1]
    body = entry.model_dump(mode="json")
    null = body[field] is None  # version 2 takes an absent field as null
    del body[field]
    assert (entry_hash(body, entry.prev_hash) == entry.hash) is null


def test_every_contract_field_is_covered_by_the_hash() -> None:
    assert set(HASHED_FIELDS) | {"hash", "prev_hash"} == set(AuditEntry.model_fields)
    assert set(CHAIN_FIELDS) == set(HASHED_FIELDS) | {"prev_hash"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("new_value", "CEO"),
        ("previous_value", "Sales Manager"),
        ("approver", "mallory@example.com"),
        ("mode", AuditMode.APPROVED),
        ("confidence", 0.99),
        ("record_id", "hs-contact-9999"),
        ("executed_at", datetime(2026, 11, 25, tzinfo=UTC)),
        ("seq", 2),
    ],
)
def test_mutating_a_stored_row_breaks_recomputation(
    two_field_execution: Execution, field: str, value: Any
) -> None:
    entry = entries_for(two_field_execution, 1, GENESIS)[0]
    assert _recomputed(entry) == entry.hash
    tampered = AuditEntry.model_validate({**entry.model_dump(), field: value})
    assert getattr(tampered, field) == value
    assert _recomputed(tampered) != tampered.hash


def test_rewriting_a_row_with_a_new_hash_breaks_the_next_link(two_field_execution: Execution) -> None:
    first, second = entries_for(two_field_execution, 1, GENESIS)
    tampered = first.model_copy(update={"new_value": "Munich"})
    rehashed = tampered.model_copy(update={"hash": _recomputed(tampered)})
    assert _recomputed(rehashed) == rehashed.hash  # the row alone looks fine …
    assert second.prev_hash != rehashed.hash  # … but the chain no longer links


def test_hash_survives_a_json_round_trip(two_field_execution: Execution) -> None:
    """What verification recomputes from a stored row equals what was hashed at append time."""
    for entry in entries_for(two_field_execution, 1, GENESIS):
        stored = AuditEntry.model_validate(json.loads(entry.model_dump_json()))
        assert stored == entry
        assert _recomputed(stored) == entry.hash


# --- the stored form of a row ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "null"),
        ("", '""'),
        ("1", '"1"'),
        (1, "1"),
        (2.5, "2.5"),
        (True, "true"),
        ("VP Sales", '"VP Sales"'),
    ],
)
def test_values_are_stored_as_the_json_text_that_was_hashed(value: Any, text: str) -> None:
    for column in VALUE_COLUMNS:
        assert to_column(column, value) == text


def test_other_columns_are_stored_as_they_are() -> None:
    assert VALUE_COLUMNS == ("previous_value", "new_value", "proposed_value")
    for column, value in [("field", "jobtitle"), ("confidence", 0.91), ("seq", 3), ("rule_id", None)]:
        assert to_column(column, value) is value


def test_a_stored_row_reads_back_as_the_entry_with_value_types_kept(two_field_execution: Execution) -> None:
    for entry in entries_for(two_field_execution, 1, GENESIS):
        for previous, new in [(None, "Berlin"), ("", "1"), (1, True), (False, 2.5), ("null", None)]:
            typed = entry.model_copy(update={"previous_value": previous, "new_value": new})
            assert row_to_entry(_row(typed)) == typed
            assert type(row_to_entry(_row(typed)).new_value) is type(new)


def test_a_null_value_column_reads_as_null(two_field_execution: Execution) -> None:
    entry = entries_for(two_field_execution, 1, GENESIS)[0]
    row: Any = {**_row(entry), "previous_value": None, "new_value": None}
    assert (row_to_entry(row).previous_value, row_to_entry(row).new_value) == (None, None)


# --- verification, on a log held by a fake connection ---------------------------------------------

SELECT_RANGE = "SELECT * FROM audit_entries WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3"
SELECT_HEAD = "SELECT hash FROM audit_entries WHERE seq = $1"
SELECT_LAST = "SELECT max(seq) FROM audit_entries WHERE seq > $1"
IN_SQL = "SELECT current_setting('server_encoding') = 'UTF8'"


def _row(entry: AuditEntry) -> Any:
    """A row as the database returns it (values as stored by ``to_column``): a mapping."""
    return {column: to_column(column, getattr(entry, column)) for column in AuditEntry.model_fields}


class FakeLog:
    """The queries verify() makes when the database cannot check rows itself (an encoding other
    than UTF-8: every row is recomputed in Python), answered from rows in memory (any other query
    fails). The database's own check runs in tests/integration/test_audit_log.py."""

    def __init__(self, entries: list[AuditEntry]) -> None:
        self.rows = [_row(e) for e in entries]

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        assert query == SELECT_RANGE
        after, high, limit = args
        rows = (r for r in self.rows if after < r["seq"] <= high)
        return sorted(rows, key=lambda r: int(r["seq"]))[:limit]

    async def fetchval(self, query: str, *args: Any) -> Any:
        if query == IN_SQL:
            return False
        if query == SELECT_LAST:
            return max((r["seq"] for r in self.rows if r["seq"] > args[0]), default=None)
        assert query == SELECT_HEAD
        (seq,) = args
        return next((r["hash"] for r in self.rows if r["seq"] == seq), None)


@pytest.fixture
def chain(two_field_execution: Execution, make_execution: Callable[..., Execution]) -> list[AuditEntry]:
    """Four chained rows: two executions of two writes each."""
    first = entries_for(two_field_execution, 1, GENESIS)
    second_execution = two_field_execution.model_copy(update={"execution_id": make_execution().execution_id})
    return first + entries_for(second_execution, 3, first[-1].hash)


async def _verify(entries: list[AuditEntry], head: tuple[int, str] | None = None) -> VerifyReport:
    return await verify(FakeLog(entries), head)  # type: ignore[arg-type]


async def test_an_intact_chain_verifies(chain: list[AuditEntry]) -> None:
    report = await _verify(chain)
    assert report == VerifyReport(True, 4, [], 4, chain[-1].hash)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.ok = False  # type: ignore[misc]


async def test_an_empty_log_verifies_with_the_genesis_head() -> None:
    assert await _verify([]) == VerifyReport(True, 0, [], 0, GENESIS)


async def test_an_altered_row_is_reported(chain: list[AuditEntry]) -> None:
    chain[1] = chain[1].model_copy(update={"new_value": "CEO"})
    report = await _verify(chain)
    assert not report.ok
    assert report.problems == ["row 2: content does not match its hash (altered)"]
    assert (report.rows, report.head_seq, report.head_hash) == (4, 4, chain[-1].hash)


async def test_a_rehashed_row_breaks_the_next_link(chain: list[AuditEntry]) -> None:
    altered = chain[1].model_copy(update={"new_value": "CEO"})
    chain[1] = altered.model_copy(update={"hash": _recomputed(altered)})
    report = await _verify(chain)
    assert (report.ok, report.problems) == (False, ["row 3: prev_hash does not link to the row before it"])


async def test_a_row_removed_from_the_middle_is_reported(chain: list[AuditEntry]) -> None:
    report = await _verify([chain[0], chain[2], chain[3]])
    assert not report.ok
    assert report.problems == [
        "rows 2..2 are missing",
        "row 3: prev_hash does not link to the row before it",
    ]
    assert (report.rows, report.head_seq) == (3, 4)


async def test_rows_removed_from_the_start_are_reported(chain: list[AuditEntry]) -> None:
    report = await _verify(chain[2:])
    assert report.problems == [
        "rows 1..2 are missing",
        "row 3: prev_hash does not link to the row before it",
    ]


async def test_a_renumbered_row_is_reported_as_altered(chain: list[AuditEntry]) -> None:
    chain[3] = chain[3].model_copy(update={"seq": 5})
    report = await _verify(chain)
    assert report.problems == ["rows 4..4 are missing", "row 5: content does not match its hash (altered)"]
    assert report.head_seq == 5


async def test_a_cut_short_log_is_consistent_but_the_recorded_head_reveals_it(
    chain: list[AuditEntry],
) -> None:
    assert (await _verify(chain[:2])).ok
    report = await _verify(chain[:2], (4, chain[3].hash))
    assert (report.ok, report.problems) == (
        False,
        ["row 4 (the expected head) is missing: the log was cut short"],
    )
    assert (report.head_seq, report.head_hash) == (2, chain[1].hash)


async def test_the_recorded_head_must_carry_its_hash(chain: list[AuditEntry]) -> None:
    assert (await _verify(chain, (4, chain[3].hash))).ok
    assert (await _verify(chain, (2, chain[1].hash))).ok
    report = await _verify(chain, (2, chain[3].hash))
    assert (report.ok, report.problems) == (False, ["row 2 does not carry the expected head hash"])


def test_parse_head_takes_what_verify_prints() -> None:
    digest = "ab" * 32
    assert parse_head(f"42:{digest}") == (42, digest)
    assert parse_head(f"1:{digest}") == (1, digest)
    assert parse_head(f"{10**17}:{digest}") == (10**17, digest)  # 18 digits: within bigint
    for bad in (
        f"0:{digest}",
        f"042:{digest}",
        f"42:{digest[:-1]}",
        f"42:{digest.upper()}",
        f"x42:{digest}",
        digest,
    ):
        with pytest.raises(ValueError, match=r"^expected SEQ:HASH, e.g. 42:<64 hex digits>$"):
            parse_head(bad)


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 11, 30, 9, 15, 0, tzinfo=UTC),
        datetime(2026, 11, 30, 9, 15, 0, 120000, tzinfo=UTC),
        datetime.fromisoformat("2026-11-30T10:15:00.000001+05:45"),
        datetime.fromisoformat("2026-11-30T10:15:00-03:00"),
        datetime.fromisoformat("2026-11-30T10:15:00+00:00:30"),  # an offset in seconds
    ],
)
@pytest.mark.parametrize("human", [False, True])
def test_rows_hash_as_the_verifier_recomputes_them_whatever_the_values(
    when: datetime,
    human: bool,
    make_proposal: Callable[..., Proposal],
    make_decision: Callable[..., Decision],
    make_execution: Callable[..., Execution],
) -> None:
    """Rows are built without a model per row; their hashes must be what `verify` recomputes from
    the stored row (timestamps with and without fractions or another offset, every JSON type)."""
    values: list[Any] = [None, "", "Ünïcode ✓", 2.5e16, 0.1, -3, True, 1e-7]
    proposal = make_proposal(
        changes=[FieldChange(field=f"f{i}", previous=None, proposed=v) for i, v in enumerate(values)],
        proposed_at=when,
        confidence=1.0,
    )
    decider = Decider(kind="human", identity="bob@example.com") if human else None
    decision = make_decision(proposal, decided_by=decider, decided_at=when)
    execution = make_execution(decision, executed_at=when)
    entries = entries_for(execution, 7, "a" * 64)
    assert [e.new_value for e in entries] == values
    seconds_offset = bool((when.utcoffset() or timedelta()) % timedelta(minutes=1))
    for entry in entries:
        # What verify reads: PostgreSQL gives every timestamptz back in UTC, whatever the offset.
        stored = _row(entry)
        for name in ("proposed_at", "decided_at", "executed_at"):
            stored[name] = stored[name].astimezone(UTC)
        assert row_hash(stored) == entry.hash
        if not seconds_offset:  # pydantic's JSON drops an offset's seconds: the dump is not exact
            assert _recomputed(entry) == entry.hash


def test_the_worked_example_of_docs_audit_md_holds() -> None:
    """docs/audit.md shows this row's canonical bytes and hash: they must stay true."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "audit.md").read_text()
    text = next(line for line in docs.splitlines() if line.startswith('{"approver"'))
    body = json.loads(text)
    assert set(body) == set(CHAIN_FIELDS)
    assert canonical.dumps(body).decode() == text
    digest = canonical_hash(body)
    assert f"SHA-256: `{digest}`" in docs
    assert digest == "597350449e1dd2a8d75e7d083ebdb98531e3a4975f81d1fc0e519a5c10a8e177"


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(CHAIN_FIELDS) | st.text(max_size=3),
        st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats() | st.text(max_size=20),
        max_size=8,
    )
)
def test_the_chain_hash_is_sha256_of_rfc8785_whatever_the_values(body: dict[str, Any]) -> None:
    """canonical_hash takes a shortcut for plain flat bodies: it must give RFC 8785's bytes."""
    try:
        expected = hashlib.sha256(rfc8785.dumps(body)).hexdigest()
    except rfc8785.CanonicalizationError:
        return  # what JCS refuses (NaN, an integer beyond 2**53) the chain never holds
    assert canonical_hash(body) == expected


_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats()
    | st.text(max_size=20)
    | st.lists(st.integers(), max_size=2)
)


_TEXT = st.text(max_size=12)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(_TEXT, min_size=12, max_size=12),
    maybe=st.lists(st.none() | _TEXT, min_size=4, max_size=4),
    values=st.lists(_VALUES.filter(lambda v: type(v) is not list), min_size=6, max_size=6),
    confidence=st.floats(),
    seq=st.integers(1, 2**54),
    reverts=st.none() | st.integers(1, 2**60),
    mode=st.sampled_from(AuditMode),
)
def test_the_append_hashes_rfc8785_bytes_of_the_row_whatever_the_values(
    texts: list[str],
    maybe: list[str | None],
    values: list[Any],
    confidence: float,
    seq: int,
    reverts: int | None,
    mode: AuditMode,
    make_proposal: Callable[..., Proposal],
    make_decision: Callable[..., Decision],
) -> None:
    """The append writes a row's canonical text itself (the members an outcome's rows share once,
    in key order, a row's own between them): each hash must be sha256 of RFC 8785's bytes of the
    row's body, and where RFC 8785 refuses the body (an integer beyond 2**53, NaN), so must it."""
    fields = [(f"{texts[0]}-{n}", values[2 * n], values[2 * n + 1]) for n in range(2)]
    base = make_proposal(changes=[FieldChange(field=fields[0][0], previous=None, proposed="x")])
    proposal = base.model_copy(
        update={
            "record_id": texts[1],
            "confidence": confidence,
            "evidence": {REVERTS_KEY: reverts},
            "source": base.source.model_copy(
                update={
                    "system": texts[2],
                    "event_id": texts[3],
                    "detector": texts[4],
                    "detector_version": texts[5],
                }
            ),
        }
    )
    by: dict[str, Any] = {"kind": texts[6], "identity": texts[7]}  # any text, unvalidated
    decided_by = Decider.model_construct(
        **by, policy_version=maybe[0], policy_hash=maybe[1], rule_id=maybe[2]
    )
    decision = make_decision(proposal).model_copy(update={"decided_by": decided_by})
    outcome = Outcome(decision, mode, fields, maybe[3])
    try:
        shared, rows = _chained(outcome, seq, texts[8])
    except (rfc8785.CanonicalizationError, ValueError, OverflowError):
        shared, rows = [], []
    prev_hash = texts[8]
    for n, (field, previous, new) in enumerate(fields):
        body = {
            "hash_version": 2,
            "object_type": proposal.object_type.value,
            "record_id": texts[1],
            "kind": proposal.kind.value,
            "source_system": texts[2],
            "source_event_id": texts[3],
            "detector": f"{texts[4]}@{texts[5]}",
            "confidence": confidence,
            "mode": mode.value,
            "decider": texts[6],
            "approver": texts[7],
            "policy_version": maybe[0],
            "policy_hash": maybe[1],
            "rule_id": maybe[2],
            "reason": maybe[3],
            "proposal_id": str(proposal.proposal_id),
            "decision_id": str(decision.decision_id),
            "execution_id": None,
            "reverts_seq": reverts,
            "proposed_at": json_time(proposal.proposed_at),
            "decided_at": json_time(decision.decided_at),
            "executed_at": None,
            "seq": seq + n,
            "field": field,
            "previous_value": json.dumps(previous),
            "new_value": json.dumps(new),
            "proposed_value": json.dumps("x" if n == 0 else None),
            "prev_hash": prev_hash,
        }
        assert set(body) == set(CHAIN_FIELDS)
        try:
            expected = hashlib.sha256(rfc8785.dumps(body)).hexdigest()
        except rfc8785.CanonicalizationError:
            assert not rows  # refused too
            return
        own = dict(zip(_OWN, rows[n], strict=True))
        assert own.pop("hash") == expected
        assert dict(zip(_SHARED, shared, strict=True)) | own == body  # the columns, as hashed
        prev_hash = expected
