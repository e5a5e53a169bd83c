"""A reviewer's modifications merged into a proposal's changes (approve with changes)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from changegate.core.contracts import FieldChange, Proposal
from changegate.review_api.queue import merge_modifications
from pydantic import ValidationError


@pytest.fixture
def proposal(make_proposal: Callable[..., Proposal]) -> Proposal:
    return make_proposal(
        changes=[
            FieldChange(field="jobtitle", previous="Sales Manager", proposed="VP Sales"),
            FieldChange(field="city", previous=None, proposed="Berlin"),
            FieldChange(field="company_size", previous=200, proposed=250),
        ]
    )


def test_named_fields_get_the_reviewer_value_and_keep_previous(proposal: Proposal) -> None:
    merged = merge_modifications(proposal, {"jobtitle": "Head of Sales", "company_size": 240})
    assert merged == [
        FieldChange(field="jobtitle", previous="Sales Manager", proposed="Head of Sales"),
        FieldChange(field="city", previous=None, proposed="Berlin"),
        FieldChange(field="company_size", previous=200, proposed=240),
    ]


def test_no_modifications_keep_the_proposal(proposal: Proposal) -> None:
    assert merge_modifications(proposal, {}) == proposal.changes


def test_reviewer_may_set_a_field_to_null(proposal: Proposal) -> None:
    merged = merge_modifications(proposal, {"city": None})
    assert merged[1] == FieldChange(field="city", previous=None, proposed=None)


def test_the_proposal_itself_is_not_changed(proposal: Proposal) -> None:
    before = list(proposal.changes)
    merge_modifications(proposal, {"jobtitle": "Head of Sales"})
    assert proposal.changes == before


def test_unknown_fields_are_refused_and_listed(proposal: Proposal) -> None:
    with pytest.raises(ValueError, match=r"^fields not in the proposal: email, phone$"):
        merge_modifications(proposal, {"phone": "+49 30 1234", "jobtitle": "CEO", "email": "a@b.example"})


def test_a_single_unknown_field_is_named(proposal: Proposal) -> None:
    with pytest.raises(ValueError, match=r"^fields not in the proposal: hubspot_owner_id$"):
        merge_modifications(proposal, {"hubspot_owner_id": "owner-23"})


def test_a_value_that_is_not_a_property_value_is_refused(proposal: Proposal) -> None:
    with pytest.raises(ValueError, match=r"^jobtitle takes a string, not a dict$"):
        merge_modifications(proposal, {"jobtitle": {"nested": "object"}})
    clearing = FieldChange(field="fax", previous=None, proposed=None)
    with pytest.raises(ValidationError, match="proposed"):  # no type to compare: the model refuses it
        merge_modifications(proposal.model_copy(update={"changes": [clearing]}), {"fax": {"a": 1}})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("jobtitle", 12345, "jobtitle takes a string, not a number"),
        ("jobtitle", True, "jobtitle takes a string, not a boolean"),
        ("company_size", "250", "company_size takes a number, not a string"),
        ("company_size", False, "company_size takes a number, not a boolean"),
    ],
)
def test_a_value_of_another_type_than_the_field_takes_is_refused(
    proposal: Proposal, field: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        merge_modifications(proposal, {field: value})


def test_an_integer_and_a_float_are_both_numbers(proposal: Proposal) -> None:
    assert merge_modifications(proposal, {"company_size": 240.5})[2].proposed == 240.5


def test_a_field_proposed_null_takes_the_type_of_its_previous_value(
    make_proposal: Callable[..., Proposal],
) -> None:
    clearing = make_proposal(changes=[FieldChange(field="phone", previous="+4930123", proposed=None)])
    assert merge_modifications(clearing, {"phone": "+4930999"})[0].proposed == "+4930999"
    with pytest.raises(ValueError, match=r"^phone takes a string, not a number$"):
        merge_modifications(clearing, {"phone": 4930999})
