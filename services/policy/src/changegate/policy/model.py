"""The policy document: ordered rules of conditions and actions, validated at load."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from enum import StrEnum
from typing import Literal

from changegate.core import field_risk
from changegate.core.contracts import ObjectType, Proposal, ProposalKind, Trigger
from changegate.core.contracts.base import PropertyValue, is_empty
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Guardrail: these kinds always need a human, whatever a policy file says (and so does any change
# of a field the field-risk table gives to a human: an owner, an email).
NEVER_AUTO_APPLY = field_risk.HUMAN_KINDS
_DURATION = re.compile(r"^(\d+)\s*([dhm])$")


class Action(StrEnum):
    AUTO_APPLY = "auto_apply"
    REVIEW = "review"
    REJECT = "reject"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Strict):
    """Every given criterion must hold; an absent criterion matches anything."""

    kind: list[ProposalKind] | None = None
    object_type: list[ObjectType] | None = None
    source_system: list[str] | None = None
    trigger: list[Trigger] | None = None
    fields: list[str] | None = Field(None, description="every changed field is one of these")
    previous_empty: bool | None = Field(
        None, description="true: every change fills an empty field; false: some change overwrites"
    )
    min_confidence: float | None = Field(None, ge=0, le=1)
    max_confidence: float | None = Field(None, ge=0, le=1)
    min_confidence_bound: float | None = Field(
        None,
        ge=0,
        le=1,
        description="the evidence floor: the lower credible bound the detector states for the confidence"
        " (evidence.confidence_basis.lower_bound, from reviewers' decisions) is at least this; a proposal"
        " that states none is held to its confidence",
    )
    evidence_flags_any: list[str] | None = Field(None, description="the evidence raises one of these")
    evidence_flags_none: list[str] | None = Field(None, description="the evidence raises none of these")
    proposed_values: dict[str, list[PropertyValue]] | None = Field(
        None, description="field -> allowed proposed values (the field must be changed)"
    )
    previous_values: dict[str, list[PropertyValue]] | None = Field(
        None, description="field -> allowed previous values (the field must be changed)"
    )

    @model_validator(mode="after")
    def _bounds(self) -> Condition:
        if (
            self.min_confidence is not None
            and self.max_confidence is not None
            and self.min_confidence > self.max_confidence
        ):
            raise ValueError("min_confidence is above max_confidence: the rule can never match")
        return self

    def matches(self, p: Proposal) -> bool:
        """The hot path: cheapest criteria first, no explanation strings (see ``mismatches``)."""
        if self.kind is not None and p.kind not in self.kind:
            return False
        if self.trigger is not None and p.source.trigger not in self.trigger:
            return False
        if self.min_confidence is not None and p.confidence < self.min_confidence:
            return False
        if self.max_confidence is not None and p.confidence > self.max_confidence:
            return False
        if self.min_confidence_bound is not None and confidence_bound(p) < self.min_confidence_bound:
            return False
        if self.object_type is not None and p.object_type not in self.object_type:
            return False
        if self.source_system is not None and p.source.system not in self.source_system:
            return False
        if self.fields is not None and any(c.field not in self.fields for c in p.changes):
            return False
        if self.previous_empty is not None and (
            all(is_empty(c.previous) for c in p.changes) != self.previous_empty
        ):
            return False
        if self.evidence_flags_any is not None or self.evidence_flags_none is not None:
            flags = evidence_flags(p)
            if self.evidence_flags_any is not None and not flags.intersection(self.evidence_flags_any):
                return False
            if self.evidence_flags_none is not None and flags.intersection(self.evidence_flags_none):
                return False
        if self.proposed_values is not None and not _values_match(
            {c.field: c.proposed for c in p.changes}, self.proposed_values
        ):
            return False
        return self.previous_values is None or _values_match(
            {c.field: c.previous for c in p.changes}, self.previous_values
        )

    def mismatches(self, p: Proposal) -> list[str]:
        """Why this condition does not match ``p`` (empty when it does): for `policy explain`."""
        why: list[str] = []
        if self.kind is not None and p.kind not in self.kind:
            why.append(f"kind {p.kind.value} not in {_names(self.kind)}")
        if self.object_type is not None and p.object_type not in self.object_type:
            why.append(f"object_type {p.object_type.value} not in {_names(self.object_type)}")
        if self.source_system is not None and p.source.system not in self.source_system:
            why.append(f"source_system {p.source.system} not in {self.source_system}")
        if self.trigger is not None and p.source.trigger not in self.trigger:
            why.append(f"trigger {p.source.trigger.value} not in {_names(self.trigger)}")
        if self.fields is not None:
            others = sorted({c.field for c in p.changes} - set(self.fields))
            if others:
                why.append(f"changes fields outside {self.fields}: {others}")
        if self.previous_empty is not None:
            empty = all(is_empty(c.previous) for c in p.changes)
            if empty != self.previous_empty:
                why.append("every previous value is empty" if empty else "a previous value is not empty")
        if self.min_confidence is not None and p.confidence < self.min_confidence:
            why.append(f"confidence {p.confidence:.2f} < {self.min_confidence:.2f}")
        if self.max_confidence is not None and p.confidence > self.max_confidence:
            why.append(f"confidence {p.confidence:.2f} > {self.max_confidence:.2f}")
        if self.min_confidence_bound is not None and confidence_bound(p) < self.min_confidence_bound:
            why.append(
                f"confidence's lower bound {confidence_bound(p):.3f} < {self.min_confidence_bound:.3f}"
            )
        flags = evidence_flags(p)
        if self.evidence_flags_any is not None and not flags.intersection(self.evidence_flags_any):
            why.append(f"evidence raises none of {self.evidence_flags_any}")
        if self.evidence_flags_none is not None and flags.intersection(self.evidence_flags_none):
            why.append(f"evidence raises {sorted(flags.intersection(self.evidence_flags_none))}")
        if self.proposed_values is not None and not _values_match(
            {c.field: c.proposed for c in p.changes}, self.proposed_values
        ):
            why.append(f"proposed values not in {self.proposed_values}")
        if self.previous_values is not None and not _values_match(
            {c.field: c.previous for c in p.changes}, self.previous_values
        ):
            why.append(f"previous values not in {self.previous_values}")
        return why


def _names(values: Sequence[StrEnum]) -> list[str]:
    return [str(v) for v in values]


def evidence_flags(p: Proposal) -> set[str]:
    """Risk flags a detector raised in the evidence (e.g. ``different_email_domains``)."""
    flags = p.evidence.get("flags", [])
    return {str(f) for f in flags} if isinstance(flags, list) else set()


def stated_bound(p: Proposal) -> bool:
    basis = p.evidence.get("confidence_basis")
    return isinstance(basis, dict) and "lower_bound" in basis


def confidence_bound(p: Proposal) -> float:
    """The lower credible bound the detector states for the confidence (never above it); the
    confidence itself when none is stated, and 0 for one that is not a probability."""
    if not stated_bound(p):
        return p.confidence
    bound = p.evidence["confidence_basis"]["lower_bound"]
    if isinstance(bound, bool) or not isinstance(bound, int | float) or not 0 <= bound <= 1:
        return 0.0
    return min(float(bound), p.confidence)


def _values_match(actual: dict[str, PropertyValue], wanted: dict[str, list[PropertyValue]]) -> bool:
    # Compare with types: in Python True == 1, but a CRM's true and 1 are different values.
    return all(
        f in actual and any(type(actual[f]) is type(v) and actual[f] == v for v in allowed)
        for f, allowed in wanted.items()
    )


class ReviewOptions(_Strict):
    queue: str = Field("default", min_length=1)
    priority: Literal["low", "normal", "high"] = "normal"
    expires_after: timedelta | None = Field(
        None, description="e.g. '7d', '12h', '30m': undecided by then, the proposal expires"
    )
    approvals: int = Field(
        1, ge=1, le=5, description="distinct reviewers who must approve (2: four-eyes); any rejection ends it"
    )

    @field_validator("expires_after", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        if isinstance(value, str) and (m := _DURATION.match(value.strip())):
            unit = {"d": "days", "h": "hours", "m": "minutes"}[m[2]]
            return timedelta(**{unit: int(m[1])})
        return value


class Rule(_Strict):
    id: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str | None = None
    when: Condition = Field(default_factory=Condition)
    action: Action
    review: ReviewOptions | None = Field(None, description="for review: queue, priority, expiry")
    reason: str | None = Field(None, description="for reject: why (required)")
    allow_high_risk: bool = Field(
        False,
        description="auto_apply even when the change touches one of the document's high-risk fields or "
        "evidence flags, or the lifecycle stage on a defined event; never a human-only field",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if self.action is Action.AUTO_APPLY:
            unsafe = sorted(set(self.when.kind or ProposalKind) & NEVER_AUTO_APPLY)
            if unsafe:
                raise ValueError(
                    f"would auto-apply {', '.join(unsafe)}: merges and owner reassignments always "
                    "need a human reviewer (limit the rule's kind)"
                )
            self._auto_applies_no_human_field()
        if self.action is Action.REJECT and not self.reason:
            raise ValueError("a reject rule needs a reason")
        if self.reason is not None and self.action is not Action.REJECT:
            raise ValueError("a reason applies to reject rules only")
        if self.review is not None and self.action is not Action.REVIEW:
            raise ValueError("review options apply to review rules only")
        return self

    def _auto_applies_no_human_field(self) -> None:
        """An auto-apply rule may not name a human-only field, and ``allow_high_risk`` is an
        explicit exception only where the field-risk table permits one: a rule that could then
        auto-apply an email, or a lifecycle stage on anything but a defined event, is refused."""
        table = field_risk.table()
        human = {f for f, c in table.classes.items() if field_risk.RISK[c] is field_risk.Risk.HUMAN}
        named = set(self.when.fields or []) | set(self.when.proposed_values or {})
        named |= set(self.when.previous_values or {})
        if named & human:
            raise ValueError(
                f"would auto-apply {', '.join(sorted(named & human))}: a human-only field always needs "
                "a human reviewer"
            )
        if not self.allow_high_risk:
            return
        kinds = set(self.when.kind or ProposalKind)
        if ProposalKind.FIELD_UPDATE in kinds and self.when.fields is None:
            raise ValueError(
                "allow_high_risk would let field updates auto-apply "
                f"{', '.join(table.fields_of(field_risk.FieldClass.EMAIL))} (human-only fields): "
                "limit the rule's fields"
            )
        kind, trigger = field_risk.GUARDED_EXCEPTION
        if kind in kinds and set(self.when.trigger or Trigger) != {trigger}:
            guarded = ", ".join(table.fields_of(field_risk.FieldClass.LIFECYCLE_STAGE))
            raise ValueError(
                f"allow_high_risk auto-applies {guarded} only when triggered by a {trigger.value}: "
                f"limit the rule's trigger to [{trigger.value}]"
            )


class PolicyDocument(_Strict):
    version: str = Field(min_length=1)
    description: str | None = None
    default: Action = Action.REVIEW
    default_review: ReviewOptions = Field(default_factory=ReviewOptions)
    high_risk_fields: list[str] = Field(
        default_factory=list,
        description="further fields whose change needs review unless the matching rule says "
        "allow_high_risk (the field-risk table's human-only fields always need a human, its guarded "
        "lifecycle stage a rule with allow_high_risk for defined events)",
    )
    high_risk_evidence: list[str] = Field(
        default_factory=lambda: ["different_email_domains"],
        description="evidence flags that need review, unless the rule says allow_high_risk",
    )
    rules: list[Rule]

    @model_validator(mode="after")
    def _document(self) -> PolicyDocument:
        if self.default is Action.AUTO_APPLY:
            raise ValueError("default action auto_apply is refused: unmatched proposals need review")
        if self.default is Action.REJECT:
            raise ValueError("default action reject is refused: say which proposals to reject in a rule")
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule {rule.id!r}: duplicate rule id")
            seen.add(rule.id)
        return self
