"""The audit log's rows and their hash chain, built from executions without a database."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from changegate.audit.chain import (
    GENESIS,
    VALUE_COLUMNS,
    VerifyReport,
    entry_hash,
    parse_head,
    row_to_entry,
    to_column,
    verify,
)
from changegate.audit.store import entries_for
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

# proposed_value is hashed only on a modified approval (its own tests below).
HASHED_FIELDS = [f for f in AuditEntry.model_fields if f not in ("hash", "prev_hash", "proposed_value")]


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
def test_no_rows_unless_applied(
    two_field_execution: Execution, make_execution: Callable[..., Execution], status: ExecutionStatus
) -> None:
    execution = make_execution(
        two_field_execution.decision, status=status, writes=two_field_execution.writes, error="boom"
    )
    assert entries_for(execution, 1, GENESIS) == []


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
    assert entry.proposed_value is None


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


def test_rows_without_a_modification_hash_as_before_the_proposed_value_existed(
    make_proposal: Callable[..., Proposal],
    make_decision: Callable[..., Decision],
    make_execution: Callable[..., Execution],
    human_decider: Decider,
) -> None:
    decision = make_decision(make_proposal(), outcome=DecisionOutcome.APPROVED, decided_by=human_decider)
    (entry,) = entries_for(make_execution(decision), 1, GENESIS)
    fields = entry.model_dump(mode="json")
    older = {k: v for k, v in fields.items() if k != "proposed_value"}  # a row written before it existed
    assert entry_hash(older, GENESIS) == entry.hash == entry_hash({**fields, "proposed_value": "x"}, GENESIS)


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


def test_entry_hash_is_sha256_of_canonical_json_and_previous_hash() -> None:
    fields = {"b": 2, "a": "x", "hash": "ignored", "prev_hash": "ignored too"}
    expected = hashlib.sha256(b'{"a":"x","b":2}|prev').hexdigest()
    assert entry_hash(fields, "prev") == expected


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
    entry = entries_for(two_field_execution, 1, GENESIS)[0]
    body = entry.model_dump(mode="json")
    del body[field]
    assert entry_hash(body, entry.prev_hash) != entry.hash


def test_every_contract_field_is_covered_by_the_hash() -> None:
    assert set(HASHED_FIELDS) | {"hash", "prev_hash", "proposed_value"} == set(AuditEntry.model_fields)
    assert len(HASHED_FIELDS) == len(AuditEntry.model_fields) - 3


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

SELECT_ALL = "SELECT * FROM audit_entries ORDER BY seq"
SELECT_HEAD = "SELECT hash FROM audit_entries WHERE seq = $1"


def _row(entry: AuditEntry) -> Any:
    """A row as the database returns it (values as stored by ``to_column``): a mapping."""
    return {column: to_column(column, getattr(entry, column)) for column in AuditEntry.model_fields}


class FakeLog:
    """The two queries verify() makes, answered from rows in memory (any other query fails)."""

    def __init__(self, entries: list[AuditEntry]) -> None:
        self.rows = [_row(e) for e in entries]

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        assert (query, args) == (SELECT_ALL, ())
        return sorted(self.rows, key=lambda r: int(r["seq"]))

    async def fetchval(self, query: str, *args: Any) -> Any:
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
    for entry in entries:
        assert _recomputed(entry) == entry.hash
        stored = {c: to_column(c, v) for c, v in entry.model_dump().items()}
        for name in VALUE_COLUMNS:
            stored[name] = json.loads(stored[name])
        assert _recomputed(AuditEntry.model_validate(stored)) == entry.hash
