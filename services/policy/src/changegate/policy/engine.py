"""The policy as data, and its evaluation: first matching rule wins, else the default action."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import yaml
from changegate.core.contracts import Proposal, ProposalKind, Trigger
from changegate.core.contracts.base import PropertyValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_POLICY = Path(__file__).with_name("default_policy.yaml")
# Guardrail: these kinds always need a human, whatever a policy file says.
NEVER_AUTO_APPLY = frozenset({ProposalKind.MERGE, ProposalKind.OWNER_REASSIGNMENT})


class Action(StrEnum):
    AUTO_APPLY = "auto_apply"
    REVIEW = "review"
    REJECT = "reject"


class Condition(BaseModel):
    """Every given criterion must hold; an absent criterion matches anything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: list[ProposalKind] | None = None
    object_type: list[str] | None = None
    source_system: list[str] | None = None
    trigger: list[Trigger] | None = None
    fields: list[str] | None = Field(None, description="every changed field is one of these")
    fills_empty: bool | None = Field(None, description="every change fills an empty field")
    min_confidence: float | None = Field(None, ge=0, le=1)
    max_confidence: float | None = Field(None, ge=0, le=1)
    proposed_values: dict[str, list[PropertyValue]] | None = Field(
        None, description="field -> allowed proposed values"
    )

    def matches(self, p: Proposal) -> bool:
        checks = (
            self.kind is None or p.kind in self.kind,
            self.object_type is None or p.object_type in self.object_type,
            self.source_system is None or p.source.system in self.source_system,
            self.trigger is None or p.source.trigger in self.trigger,
            self.fields is None or all(c.field in self.fields for c in p.changes),
            self.fills_empty is None or all(c.fills_empty for c in p.changes) == self.fills_empty,
            self.min_confidence is None or p.confidence >= self.min_confidence,
            self.max_confidence is None or p.confidence <= self.max_confidence,
            self.proposed_values is None or self._values_match(p, self.proposed_values),
        )
        return all(checks)

    @staticmethod
    def _values_match(p: Proposal, wanted: dict[str, list[PropertyValue]]) -> bool:
        proposed = {c.field: c.proposed for c in p.changes}
        return all(f in proposed and proposed[f] in allowed for f, allowed in wanted.items())


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str | None = None
    when: Condition = Field(default_factory=Condition)
    action: Action
    reason: str | None = Field(None, description="for reject: why")


class PolicyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1)
    default: Action = Action.REVIEW
    rules: list[Rule]

    @model_validator(mode="after")
    def _guardrails(self) -> PolicyDocument:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule {rule.id!r}: duplicate rule id")
            seen.add(rule.id)
            if rule.action is Action.AUTO_APPLY:
                kinds = set(rule.when.kind or ProposalKind)
                unsafe = sorted(kinds & NEVER_AUTO_APPLY)
                if unsafe:
                    raise ValueError(
                        f"rule {rule.id!r} would auto-apply {', '.join(unsafe)}: "
                        "merges and owner reassignments always need a human reviewer"
                    )
        if self.default is Action.AUTO_APPLY:
            raise ValueError("default action auto_apply is refused: unmatched proposals need review")
        return self


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class Route:
    action: Action
    rule_id: str
    explanation: str


@dataclass(frozen=True)
class Policy:
    document: PolicyDocument
    content_hash: str
    source: str

    @property
    def version(self) -> str:
        return self.document.version

    @classmethod
    def load(cls, path: Path | None = None) -> Policy:
        path = path or DEFAULT_POLICY
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise PolicyError(f"{path}: cannot read policy file: {exc.strerror}") from exc
        return cls.parse(raw, str(path))

    @classmethod
    def parse(cls, raw: bytes, source: str) -> Policy:
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise PolicyError(f"{source}: not valid YAML: {exc}") from exc
        try:
            document = PolicyDocument.model_validate(data)
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
            )
            raise PolicyError(f"{source}: invalid policy: {details}") from exc
        return cls(document, hashlib.sha256(raw).hexdigest(), source)

    def evaluate(self, p: Proposal) -> Route:
        for rule in self.document.rules:
            if rule.when.matches(p):
                return Route(rule.action, rule.id, self._explain(rule.action, rule, p))
        return Route(self.document.default, "default", f"{self.document.default.value}: no rule matched")

    @staticmethod
    def _explain(action: Action, rule: Rule, p: Proposal) -> str:
        verb = {
            Action.AUTO_APPLY: "auto-applied",
            Action.REVIEW: "sent to review",
            Action.REJECT: "rejected",
        }[action]
        text = f"{verb}: rule {rule.id}"
        if rule.when.min_confidence is not None:
            text += f", confidence {p.confidence:.2f} ≥ {rule.when.min_confidence:.2f}"
        if action is Action.REJECT and rule.reason:
            text += f" ({rule.reason})"
        return text
