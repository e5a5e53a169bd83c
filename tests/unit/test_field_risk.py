"""The field-risk table: which fields a kind may change, which need a human, the guarded exception."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from changegate.core import field_risk
from changegate.core.contracts import FieldChange, Proposal, ProposalKind, Trigger
from changegate.core.field_risk import FieldClass, FieldTable, Risk

TABLE = FieldTable()
MakeProposal = Callable[..., Proposal]


def change(field: str, previous: object = None, proposed: object = "x") -> FieldChange:
    return FieldChange.model_validate({"field": field, "previous": previous, "proposed": proposed})


@pytest.mark.parametrize(
    ("field", "risk"),
    [
        ("hubspot_owner_id", Risk.HUMAN),
        ("OwnerId", Risk.HUMAN),
        ("email", Risk.HUMAN),
        ("Email", Risk.HUMAN),
        ("hs_additional_emails", Risk.HUMAN),
        ("hs_merged_object_ids", Risk.HUMAN),
        ("lifecyclestage", Risk.GUARDED),
        ("email_status", Risk.STANDARD),
        ("jobtitle", Risk.STANDARD),
        ("EMAIL", Risk.STANDARD),  # names are the CRM's, compared as written
    ],
)
def test_each_fields_risk(field: str, risk: Risk) -> None:
    assert TABLE.risk(change(field)) is risk


@pytest.mark.parametrize(
    ("previous", "proposed", "risk"),
    [
        ("Engineer", None, Risk.HUMAN),
        ("Engineer", "  ", Risk.HUMAN),
        ("Engineer", "", Risk.HUMAN),
        (None, None, Risk.STANDARD),
        ("", None, Risk.STANDARD),
        (None, "CTO", Risk.STANDARD),
        ("Engineer", "CTO", Risk.STANDARD),
        (0, None, Risk.HUMAN),
    ],
)
def test_erasing_a_value_is_a_deletion_a_human_decides(
    previous: object, proposed: object, risk: Risk
) -> None:
    assert TABLE.risk(change("jobtitle", previous, proposed)) is risk


@pytest.mark.parametrize(
    ("kind", "field", "allowed"),
    [
        (ProposalKind.LIFECYCLE_TRANSITION, "lifecyclestage", True),
        (ProposalKind.LIFECYCLE_TRANSITION, "hubspot_owner_id", False),
        (ProposalKind.LIFECYCLE_TRANSITION, "jobtitle", False),
        (ProposalKind.OWNER_REASSIGNMENT, "hubspot_owner_id", True),
        (ProposalKind.OWNER_REASSIGNMENT, "OwnerId", True),
        (ProposalKind.OWNER_REASSIGNMENT, "email", False),
        (ProposalKind.EMAIL_VERIFICATION, "email_status", True),
        (ProposalKind.EMAIL_VERIFICATION, "email", False),
        (ProposalKind.FIELD_UPDATE, "jobtitle", True),
        (ProposalKind.FIELD_UPDATE, "email", True),
        (ProposalKind.FIELD_UPDATE, "hubspot_owner_id", False),
        (ProposalKind.FIELD_UPDATE, "lifecyclestage", False),
        (ProposalKind.FIELD_UPDATE, "email_status", False),
        (ProposalKind.FIELD_UPDATE, "hs_merged_object_ids", False),
        (ProposalKind.MERGE, "hubspot_owner_id", True),
        (ProposalKind.MERGE, "hs_merged_object_ids", True),
        (ProposalKind.MERGE, "jobtitle", True),
    ],
)
def test_each_kind_changes_only_its_own_fields(kind: ProposalKind, field: str, allowed: bool) -> None:
    assert (TABLE.kind_refusal(kind, [change(field)]) is None) is allowed


def test_a_kind_refusal_names_every_wrong_field_and_its_class() -> None:
    changes = [change("lifecyclestage"), change("hubspot_owner_id"), change("jobtitle")]
    assert TABLE.kind_refusal(ProposalKind.LIFECYCLE_TRANSITION, changes) == (
        "a lifecycle_transition may not change hubspot_owner_id (owner), jobtitle (not lifecycle_stage)"
    )
    assert TABLE.kind_refusal(ProposalKind.FIELD_UPDATE, changes) == (
        "a field_update may not change lifecyclestage (lifecycle_stage), hubspot_owner_id (owner)"
    )
    assert TABLE.kind_refusal(ProposalKind.FIELD_UPDATE, []) is None


def test_why_a_human_must_decide() -> None:
    assert TABLE.human_reasons(ProposalKind.FIELD_UPDATE, [change("jobtitle")]) == []
    assert TABLE.human_reasons(ProposalKind.MERGE, [change("jobtitle")]) == ["a merge is decided by a human"]
    assert TABLE.human_reasons(ProposalKind.OWNER_REASSIGNMENT, [change("hubspot_owner_id", "a", "b")]) == [
        "a owner_reassignment is decided by a human",
        "hubspot_owner_id is a human-only field (owner)",
    ]
    assert TABLE.human_reasons(
        ProposalKind.FIELD_UPDATE, [change("email"), change("jobtitle", "Engineer", None)]
    ) == ["email is a human-only field (email)", "jobtitle would be erased"]
    # The guarded lifecycle stage is not human-only: the policy decides, within the exception.
    assert TABLE.human_reasons(ProposalKind.LIFECYCLE_TRANSITION, [change("lifecyclestage")]) == []


@pytest.mark.parametrize(
    ("kind", "trigger", "field", "refusal"),
    [
        (ProposalKind.FIELD_UPDATE, Trigger.ENRICHMENT, "jobtitle", None),
        (ProposalKind.FIELD_UPDATE, Trigger.ENRICHMENT, "email", "human_required"),
        (ProposalKind.FIELD_UPDATE, Trigger.ENRICHMENT, "hubspot_owner_id", "fields_not_of_kind"),
        (ProposalKind.LIFECYCLE_TRANSITION, Trigger.DEFINED_EVENT, "lifecyclestage", None),
        (ProposalKind.LIFECYCLE_TRANSITION, Trigger.AI_SCORE, "lifecyclestage", "guarded_field"),
        (ProposalKind.LIFECYCLE_TRANSITION, Trigger.RULE, "lifecyclestage", "guarded_field"),
        (ProposalKind.LIFECYCLE_TRANSITION, Trigger.DEFINED_EVENT, "hubspot_owner_id", "fields_not_of_kind"),
        (ProposalKind.EMAIL_VERIFICATION, Trigger.VERIFICATION, "email_status", None),
        (ProposalKind.OWNER_REASSIGNMENT, Trigger.RULE, "hubspot_owner_id", "human_required"),
        (ProposalKind.MERGE, Trigger.SIMILARITY, "jobtitle", "human_required"),
    ],
)
def test_what_no_policy_may_auto_apply(
    make_proposal: MakeProposal, kind: ProposalKind, trigger: Trigger, field: str, refusal: str | None
) -> None:
    proposal = make_proposal(kind=kind, trigger=trigger, changes=[change(field, "a", "b")])
    found = TABLE.auto_apply_refusal(proposal)
    assert (found[0] if found else None) == refusal


def test_the_guarded_exception_is_judged_on_the_changes_given(make_proposal: MakeProposal) -> None:
    lifecycle = make_proposal(kind=ProposalKind.LIFECYCLE_TRANSITION, trigger=Trigger.AI_SCORE)
    assert TABLE.guarded_refusal(lifecycle) == (
        "lifecyclestage auto-applies only in a lifecycle_transition triggered by a defined_event, "
        "not a lifecycle_transition triggered by ai_score"
    )
    assert TABLE.guarded_refusal(lifecycle, [change("jobtitle")]) is None
    # The changes a decision applies, not the proposal's, are what is judged.
    field_update = make_proposal()
    assert TABLE.auto_apply_refusal(field_update, [change("email")]) == (
        "human_required",
        "email is a human-only field (email)",
    )


def test_declared_fields_join_a_class_and_built_in_ones_cannot_move() -> None:
    table = FieldTable({"stage__c": FieldClass.LIFECYCLE_STAGE, "Owner__c": FieldClass.OWNER})
    assert table.classify("stage__c") is FieldClass.LIFECYCLE_STAGE
    assert table.risk(change("Owner__c")) is Risk.HUMAN
    assert table.kind_refusal(ProposalKind.LIFECYCLE_TRANSITION, [change("stage__c")]) is None
    assert table.fields_of(FieldClass.LIFECYCLE_STAGE) == ["lifecyclestage", "stage__c"]
    assert FieldTable({"email": FieldClass.EMAIL}).classify("email") is FieldClass.EMAIL
    with pytest.raises(ValueError, match=r"may not reclassify built-in fields: email, hubspot_owner_id$"):
        FieldTable({"hubspot_owner_id": FieldClass.EMAIL_STATUS, "email": FieldClass.EMAIL_STATUS})


@pytest.fixture
def fresh_table() -> Iterator[None]:
    field_risk.table.cache_clear()
    yield
    field_risk.table.cache_clear()


def test_the_process_table_reads_changegate_crm_fields(
    monkeypatch: pytest.MonkeyPatch, fresh_table: None
) -> None:
    monkeypatch.setenv("CHANGEGATE_CRM_FIELDS", '{"stage__c": "lifecycle_stage"}')
    assert field_risk.table().classify("stage__c") is FieldClass.LIFECYCLE_STAGE
    assert field_risk.table() is field_risk.table()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"email": "email_status"}', "may not reclassify built-in fields: email"),
        ('{"x": "nonsense"}', "CHANGEGATE_CRM_FIELDS is not valid"),
    ],
)
def test_a_bad_declaration_stops_the_process(
    monkeypatch: pytest.MonkeyPatch, fresh_table: None, value: str, message: str
) -> None:
    monkeypatch.setenv("CHANGEGATE_CRM_FIELDS", value)
    with pytest.raises(SystemExit, match=message):
        field_risk.table()


def test_the_detector_starts_only_with_fields_the_table_knows_as_its_kinds() -> None:
    from changegate.detector.config import LifecycleConfig, OwnerConfig, VerificationConfig
    from changegate.detector.settings import DetectorSettings

    assert DetectorSettings().field_risk_refusals(TABLE) == []
    custom = DetectorSettings(
        lifecycle=LifecycleConfig(stage_field="stage__c"),
        owner=OwnerConfig(owner_field="OwnerId"),
        verification=VerificationConfig(email_field="Email", status_field="Email_Status__c"),
    )
    assert custom.field_risk_refusals(TABLE) == [
        "CHANGEGATE_LIFECYCLE stage_field 'stage__c' is not in the lifecycle_stage class: declare it in "
        'CHANGEGATE_CRM_FIELDS (e.g. {"stage__c": "lifecycle_stage"}), the same for every service',
        "CHANGEGATE_VERIFICATION status_field 'Email_Status__c' is not in the email_status class: declare "
        'it in CHANGEGATE_CRM_FIELDS (e.g. {"Email_Status__c": "email_status"}), the same for every service',
    ]
    declared = FieldTable(
        {"stage__c": FieldClass.LIFECYCLE_STAGE, "Email_Status__c": FieldClass.EMAIL_STATUS}
    )
    assert custom.field_risk_refusals(declared) == []


def test_every_class_can_be_declared_by_its_name() -> None:
    settings = field_risk.FieldRiskSettings(crm_fields={f"f_{c.value}": c.value for c in FieldClass})
    assert settings.crm_fields == {
        "f_owner": FieldClass.OWNER,
        "f_email": FieldClass.EMAIL,
        "f_lifecycle_stage": FieldClass.LIFECYCLE_STAGE,
        "f_email_status": FieldClass.EMAIL_STATUS,
        "f_merge_bookkeeping": FieldClass.MERGE_BOOKKEEPING,
    }


def test_every_reason_a_human_must_decide_is_in_the_detail(make_proposal: MakeProposal) -> None:
    changes = [change("hubspot_owner_id", "a", "b")]
    proposal = make_proposal(kind=ProposalKind.OWNER_REASSIGNMENT, trigger=Trigger.RULE, changes=changes)
    assert TABLE.auto_apply_refusal(proposal) == (
        "human_required",
        "a owner_reassignment is decided by a human; hubspot_owner_id is a human-only field (owner)",
    )
