"""Risk is decided by the fields a change touches, not by the kind its producer gave it.

One table, shared by the policy loader, the policy engine, the signature rules (``may_sign``) and
the executor, so they cannot disagree:

| class | fields (built in) | changed by | auto-apply |
| --- | --- | --- | --- |
| owner | ``hubspot_owner_id``, ``OwnerId`` | ``owner_reassignment``, merges | never |
| email | ``email``, ``Email``, ``hs_additional_emails`` | ``field_update``, merges | never |
| lifecycle_stage | ``lifecyclestage`` | ``lifecycle_transition`` | on a defined event only |
| email_status | ``email_status`` | ``email_verification`` | as the policy says |
| merge_bookkeeping | ``hs_merged_object_ids`` | ``merge`` | never |

Any other field is ``field_update``'s (and a merge's survivorship fill). Whatever the field, a change
that empties a value someone holds is a deletion, and a merge joins records for good: both need a
human. The lifecycle stage is the one guarded exception: the mission moves it by itself on a defined
event (a demo request makes a lead an MQL), and on nothing else.

Other CRMs' property names (``stage__c``) are declared, never reclassified, with
``CHANGEGATE_CRM_FIELDS='{"stage__c": "lifecycle_stage"}'``: a declaration can only move a field into
a class, which never loosens what the built-in names require."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from enum import StrEnum

from changegate.core.contracts.base import is_empty
from changegate.core.contracts.proposal import FieldChange, Proposal, ProposalKind, Trigger
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class FieldClass(StrEnum):
    OWNER = "owner"
    EMAIL = "email"
    LIFECYCLE_STAGE = "lifecycle_stage"
    EMAIL_STATUS = "email_status"
    MERGE_BOOKKEEPING = "merge_bookkeeping"


class Risk(StrEnum):
    STANDARD = "standard"  # the policy decides
    GUARDED = "guarded"  # auto-applies only under the exception fixed here
    HUMAN = "human"  # a human decides, whatever a policy or a signer says


BUILT_IN: dict[str, FieldClass] = {
    "hubspot_owner_id": FieldClass.OWNER,
    "OwnerId": FieldClass.OWNER,
    "email": FieldClass.EMAIL,
    "Email": FieldClass.EMAIL,
    "hs_additional_emails": FieldClass.EMAIL,
    "lifecyclestage": FieldClass.LIFECYCLE_STAGE,
    "email_status": FieldClass.EMAIL_STATUS,
    "hs_merged_object_ids": FieldClass.MERGE_BOOKKEEPING,
}
RISK = {
    FieldClass.OWNER: Risk.HUMAN,
    FieldClass.EMAIL: Risk.HUMAN,
    FieldClass.LIFECYCLE_STAGE: Risk.GUARDED,
    FieldClass.EMAIL_STATUS: Risk.STANDARD,
    FieldClass.MERGE_BOOKKEEPING: Risk.HUMAN,
}
# The classes a kind may change; None: any field no dedicated kind owns (plus email).
KIND_FIELDS: dict[ProposalKind, frozenset[FieldClass] | None] = {
    ProposalKind.OWNER_REASSIGNMENT: frozenset({FieldClass.OWNER}),
    ProposalKind.LIFECYCLE_TRANSITION: frozenset({FieldClass.LIFECYCLE_STAGE}),
    ProposalKind.EMAIL_VERIFICATION: frozenset({FieldClass.EMAIL_STATUS}),
    ProposalKind.FIELD_UPDATE: None,
    ProposalKind.MERGE: None,
}
# Field classes a field update may not touch: each belongs to its own kind.
_OWNED_BY_A_KIND = frozenset(
    {FieldClass.OWNER, FieldClass.LIFECYCLE_STAGE, FieldClass.EMAIL_STATUS, FieldClass.MERGE_BOOKKEEPING}
)
# Kinds a human decides whatever they change: a merge cannot be undone in the CRM.
HUMAN_KINDS = frozenset({ProposalKind.MERGE, ProposalKind.OWNER_REASSIGNMENT})
# The guarded exception: the lifecycle stage moves by itself on a defined event, nothing else.
GUARDED_EXCEPTION = (ProposalKind.LIFECYCLE_TRANSITION, Trigger.DEFINED_EVENT)


class FieldRiskSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHANGEGATE_", extra="ignore")

    crm_fields: dict[str, FieldClass] = Field(
        default_factory=dict,
        description="your CRM's own property names for the classes of the field-risk table, e.g. "
        '{"stage__c": "lifecycle_stage", "Owner__c": "owner"} (JSON)',
    )


class FieldTable:
    """The built-in names plus declared ones; a built-in name is never reclassified."""

    def __init__(self, declared: dict[str, FieldClass] | None = None) -> None:
        clashes = sorted(f for f, c in (declared or {}).items() if f in BUILT_IN and BUILT_IN[f] is not c)
        if clashes:
            raise ValueError(
                f"CHANGEGATE_CRM_FIELDS may not reclassify built-in fields: {', '.join(clashes)}"
            )
        self.classes = {**(declared or {}), **BUILT_IN}

    def classify(self, field: str) -> FieldClass | None:
        return self.classes.get(field)

    def risk(self, change: FieldChange) -> Risk:
        """A change's own risk: its field's, or human when it erases a value (a deletion)."""
        if not is_empty(change.previous) and is_empty(change.proposed):
            return Risk.HUMAN
        cls = self.classes.get(change.field)
        return RISK[cls] if cls is not None else Risk.STANDARD

    def fields_of(self, cls: FieldClass) -> list[str]:
        return sorted(f for f, c in self.classes.items() if c is cls)

    def kind_refusal(self, kind: ProposalKind, changes: Iterable[FieldChange]) -> str | None:
        """Why a ``kind`` may not carry these changes (None: it may). A lifecycle transition changes
        the lifecycle stage only; an owner change is an owner reassignment whatever it is called."""
        allowed = KIND_FIELDS[kind]
        wrong = []
        for change in changes:
            cls = self.classes.get(change.field)
            if allowed is None:
                if kind is ProposalKind.FIELD_UPDATE and cls in _OWNED_BY_A_KIND:
                    wrong.append(f"{change.field} ({cls})")
            elif cls not in allowed:
                wrong.append(f"{change.field} ({cls or 'not ' + ' or '.join(sorted(allowed))})")
        if not wrong:
            return None
        return f"a {kind.value} may not change {', '.join(wrong)}"

    def human_reasons(self, kind: ProposalKind, changes: Sequence[FieldChange]) -> list[str]:
        """Why a human must decide this change (empty: the policy may)."""
        why = [f"a {kind.value} is decided by a human"] if kind in HUMAN_KINDS else []
        for change in changes:
            if self.risk(change) is not Risk.HUMAN:
                continue
            cls = self.classes.get(change.field)
            if cls is not None and RISK[cls] is Risk.HUMAN:
                why.append(f"{change.field} is a human-only field ({cls})")
            else:
                why.append(f"{change.field} would be erased")
        return why

    def guarded_refusal(self, proposal: Proposal, changes: Sequence[FieldChange] | None = None) -> str | None:
        """Why a guarded field may not auto-apply here (None: no guarded field, or the exception)."""
        guarded = sorted({c.field for c in changes or proposal.changes if self.risk(c) is Risk.GUARDED})
        if not guarded or (proposal.kind, proposal.source.trigger) == GUARDED_EXCEPTION:
            return None
        kind, trigger = GUARDED_EXCEPTION
        return (
            f"{', '.join(guarded)} auto-applies only in a {kind.value} triggered by a {trigger.value}, "
            f"not a {proposal.kind.value} triggered by {proposal.source.trigger.value}"
        )

    def auto_apply_refusal(
        self, proposal: Proposal, changes: Sequence[FieldChange] | None = None
    ) -> tuple[str, str] | None:
        """(reason, detail) if no policy may auto-apply ``changes`` (default: the proposal's) of
        ``proposal``; None if a policy may. The one check the engine, ``may_sign`` and the executor
        share."""
        changes = list(proposal.changes if changes is None else changes)
        wrong_kind = self.kind_refusal(proposal.kind, changes)
        if wrong_kind:
            return "fields_not_of_kind", wrong_kind
        human = self.human_reasons(proposal.kind, changes)
        if human:
            return "human_required", "; ".join(human)
        guarded = self.guarded_refusal(proposal, changes)
        if guarded:
            return "guarded_field", guarded
        return None


@functools.cache
def table() -> FieldTable:
    """The process's table: the built-in names and CHANGEGATE_CRM_FIELDS (read once)."""
    try:
        declared = FieldRiskSettings().crm_fields
    except ValidationError as exc:
        raise SystemExit(f"CHANGEGATE_CRM_FIELDS is not valid: {exc}") from exc
    try:
        return FieldTable(declared)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
