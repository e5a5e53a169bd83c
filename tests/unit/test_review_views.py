"""Pure logic of the review API: how merge evidence of any shape is shown, how identities and
approved values compare, ages and cursors, and read scopes (one rule for SQL and for one item)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from changegate.core.auth import Grant, Principal, Role
from changegate.core.contracts import (
    FieldChange,
    ObjectType,
    Proposal,
    ProposalKind,
    ProposalSource,
    Trigger,
)
from changegate.review_api import store
from changegate.review_api.decisions import changes_digest, identity_key
from changegate.review_api.views import merge_view


def merge(evidence: Any, others: list[str] | None = None) -> Proposal:
    return Proposal.model_construct(
        proposal_id=uuid.uuid4(),
        kind=ProposalKind.MERGE,
        object_type=ObjectType.CONTACT,
        record_id="a",
        other_record_ids=others if others is not None else ["b"],
        changes=[FieldChange(field="hs_merged_object_ids", previous=None, proposed="b")],
        source=ProposalSource(
            system="hubspot", event_id="e", detector="dedup", detector_version="1", trigger=Trigger.SIMILARITY
        ),
        confidence=0.95,
        rationale="b looks like a duplicate of a",
        evidence=evidence,
        proposed_at=datetime.now(UTC),
    )


def test_members_side_by_side_with_agreement_and_the_survivors_choice() -> None:
    evidence = {
        "members": {
            "a": {"firstname": "Ada", "email": "ada@x.example", "phone": "+1 415 555 0100", "city": ""},
            "b": {"firstname": "ADA ", "email": "ada@y.example", "city": "London"},
        },
        "pairs": [{"records": ["a", "b"], "probability": 0.97, "fields": {"email": {"level": "disagree"}}}],
        "survivorship": {
            "survivor": "a",
            "merged": ["b"],
            "rule": "most_complete",
            "fills": {"city": "London"},
        },
    }
    view = merge_view(merge(evidence))
    fields = {f.field: f for f in view.fields}
    assert (view.survivor, view.merged, view.records, view.rule) == ("a", ["b"], ["a", "b"], "most_complete")
    assert fields["firstname"].agreement == "agree"  # case and spaces do not make a difference
    assert fields["email"].agreement == "differ"
    assert fields["email"].level == "disagree"
    assert fields["phone"].agreement == "one_side"
    assert (fields["city"].kept, fields["city"].taken_from) == ("London", "b")
    assert view.weakest_probability == 0.97


def test_a_list_of_members_and_the_pairs_levels_of_the_weakest_pair() -> None:
    evidence = {
        "records": [
            {"record_id": "a", "properties": {"lastname": "Byron"}},
            {"id": "b", "fields": {"lastname": "Byron"}},
            {"record_id": "c", "values": {"lastname": "King"}},
            "not a member",
            {"record_id": "d"},
        ],
        "pairs": [
            {"records": ["a", "b"], "probability": 0.99, "fields": {"lastname": {"level": "exact"}}},
            {"records": ["a", "c"], "probability": 0.6, "fields": {"lastname": "else"}},
        ],
    }
    view = merge_view(merge(evidence, others=["b", "c"]))
    lastname = next(f for f in view.fields if f.field == "lastname")
    assert lastname.values == {"a": "Byron", "b": "Byron", "c": "King"}
    assert lastname.agreement == "differ"
    assert lastname.level == "else"  # the weakest pair's level
    assert view.weakest_probability == 0.6


def test_levels_alone_say_whether_fields_agree() -> None:
    evidence = {
        "fields": {"email": {"level": "exact"}, "phone": {"level": "null"}, "name": {"level": "disagree"}}
    }
    fields = {f.field: f.agreement for f in merge_view(merge(evidence)).fields}
    assert fields["email"] == "agree"
    assert fields["phone"] == "unknown"
    assert fields["name"] == "differ"


@pytest.mark.parametrize(
    "evidence",
    [
        {},
        {"members": "garbage", "pairs": "garbage", "survivorship": ["x"], "fields": 7},
        {"members": {"a": None, "b": [1, 2]}, "pairs": [None, 3, {"records": "ab", "probability": "high"}]},
        {"survivorship": {"survivor": None, "merged": None, "fills": {"x": 1}, "conflicts": {"y": [1]}}},
        {"pairs": [{"records": ["a", "b"], "probability": True, "fields": {"f": {"level": None}}}]},
        {"members": {"a": {"nested": {"deep": [1, {"x": 2}]}}, "b": {"nested": "flat"}}},
    ],
)
def test_evidence_of_any_shape_is_shown_without_failing(evidence: dict[str, Any]) -> None:
    view = merge_view(merge(evidence))
    assert view.survivor == "a"
    assert "a" in view.records
    for f in view.fields:
        assert f.agreement in ("agree", "differ", "one_side", "unknown")


def test_identities_compare_without_case_or_surrounding_spaces() -> None:
    assert identity_key(" Alice@Example.COM ") == identity_key("alice@example.com")
    assert identity_key("alice@example.com") != identity_key("alicia@example.com")


def test_approvals_of_the_same_values_digest_equally_and_of_others_not() -> None:
    one = [
        FieldChange(field="jobtitle", previous="A", proposed="B"),
        FieldChange(field="n", previous=1, proposed=2),
    ]
    same = [
        FieldChange(field="jobtitle", previous="A", proposed="B"),
        FieldChange(field="n", previous=1, proposed=2.0),
    ]
    other = [
        FieldChange(field="jobtitle", previous="A", proposed="C"),
        FieldChange(field="n", previous=1, proposed=2),
    ]
    assert changes_digest(one) == changes_digest(same)  # 2 and 2.0 are one JSON number
    assert changes_digest(one) != changes_digest(other)


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
    ],
)
def test_ages(text: str, delta: timedelta) -> None:
    assert store.parse_age(text) == delta


@pytest.mark.parametrize("text", ["", "7", "d", "1w", "-1d", "1.5h", "1234567d"])
def test_ages_that_are_not(text: str) -> None:
    with pytest.raises(ValueError, match="expected a number"):
        store.parse_age(text)


def test_a_cursor_round_trips_and_anything_else_is_refused() -> None:
    at = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    pid = uuid.uuid4()
    cursor = store.encode_cursor({"priority_rank": 1, "enqueued_at": at, "proposal_id": pid})  # type: ignore[arg-type]
    assert store.decode_cursor(cursor) == (1, at, pid)
    for bad in ("0", "bm90IGEgY3Vyc29y", "W10", "WzEsMiwzXQ"):
        with pytest.raises(store.CursorError):
            store.decode_cursor(bad)


PEOPLE = {
    "everything": Principal("v", (Grant(Role.VIEWER),)),
    "dedup": Principal("d", (Grant(Role.REVIEWER, queues=frozenset({"dedup"})),)),
    "merges": Principal("m", (Grant(Role.VIEWER, kinds=frozenset({"merge"})),)),
    "dedup merges": Principal(
        "dm", (Grant(Role.ADMIN, queues=frozenset({"dedup"}), kinds=frozenset({"merge"})),)
    ),
    "nothing": Principal("n", ()),
}


@pytest.mark.parametrize("who", list(PEOPLE))
@pytest.mark.parametrize(
    ("queue", "kind"),
    [
        ("dedup", "merge"),
        ("default", "merge"),
        ("dedup", "field_update"),
        (None, "merge"),
        (None, "field_update"),
    ],
)
def test_read_scopes_are_one_rule_for_a_page_and_for_one_item(who: str, queue: str | None, kind: str) -> None:
    principal = PEOPLE[who]
    expected = {
        "everything": True,
        "dedup": queue == "dedup",
        "merges": kind == "merge",  # a kind scope without a queue scope covers items of no queue
        "dedup merges": queue == "dedup" and kind == "merge",
        "nothing": False,
    }[who]
    assert store.may_read(principal, queue, kind) is expected
    sql = store._Sql()
    store.scope_clause(sql, principal)
    assert evaluate(sql, queue, kind) is expected


def evaluate(sql: store._Sql, queue: str | None, kind: str) -> bool:
    """The scope clause, evaluated in Python for one row (it uses only =, ANY, AND, OR)."""
    if not sql.clauses:
        return True
    text = sql.clauses[0]
    for n, value in reversed(list(enumerate(sql.params, start=1))):
        text = text.replace(f"${n}::text[]", repr(list(value)))
    text = text.replace("queue = ANY(", "(queue in ").replace("kind = ANY(", "(kind in ")
    text = text.replace(" AND ", " and ").replace(" OR ", " or ").replace("FALSE", "False")
    return bool(eval(text, {"queue": queue, "kind": kind}))
