"""Evaluating a proposal against the policy: the first matching rule wins, else the default."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from changegate.core import field_risk
from changegate.core.contracts import Decider, Proposal
from changegate.policy.lint import shadowed_rules
from changegate.policy.loader import DEFAULT_POLICY, PolicyError, parse_document
from changegate.policy.model import (
    Action,
    PolicyDocument,
    ReviewOptions,
    Rule,
    confidence_bound,
    evidence_flags,
    stated_bound,
)

__all__ = ["DEFAULT_POLICY", "Action", "Policy", "PolicyError", "Route"]

HIGH_RISK_FIELD = "high-risk-field"
HIGH_RISK_EVIDENCE = "high-risk-evidence"
FIELDS_NOT_OF_KIND = "fields-not-of-kind"


@dataclass(frozen=True)
class Route:
    action: Action
    rule_id: str
    explanation: str
    review: ReviewOptions | None = None

    def expires_at(self, now: datetime) -> datetime | None:
        if self.review is None or self.review.expires_after is None:
            return None
        return now + self.review.expires_after


@dataclass(frozen=True)
class Policy:
    document: PolicyDocument
    content_hash: str
    source: str
    content: str  # the file as loaded, for the record the executor and audit check
    warnings: list[str] = field(default_factory=list)
    _deciders: dict[str, Decider] = field(default_factory=dict, compare=False, repr=False)

    @property
    def version(self) -> str:
        return self.document.version

    @functools.cached_property
    def _high_risk_fields(self) -> frozenset[str]:
        """The document's, and the guarded fields (auto-applied only by allow_high_risk rules)."""
        guarded = field_risk.table().fields_of(field_risk.FieldClass.LIFECYCLE_STAGE)
        return frozenset(self.document.high_risk_fields) | frozenset(guarded)

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
        document = parse_document(raw, source)
        return cls(document, hashlib.sha256(raw).hexdigest(), source, raw.decode(), shadowed_rules(document))

    def decider(self, rule_id: str) -> Decider:
        cached = self._deciders.get(rule_id)
        if cached is None:
            cached = self._deciders[rule_id] = self._new_decider(rule_id)
        return cached

    def _new_decider(self, rule_id: str) -> Decider:
        return Decider(
            kind="policy",
            identity=f"policy:{self.version}",
            policy_version=self.version,
            policy_hash=self.content_hash,
            rule_id=rule_id,
        )

    def evaluate(self, p: Proposal) -> Route:
        for rule in self.document.rules:
            if rule.when.matches(p):
                return self._route(rule, p)
        return Route(
            self.document.default,
            "default",
            f"sent to review: no rule matched (default {self.document.default.value})",
            self.document.default_review,
        )

    def _route(self, rule: Rule, p: Proposal) -> Route:
        if rule.action is Action.AUTO_APPLY:
            refusal = field_risk.table().auto_apply_refusal(p)
            if refusal is not None:  # whatever the rule says: the field-risk table decides
                reason, detail = refusal
                return Route(
                    Action.REVIEW,
                    FIELDS_NOT_OF_KIND if reason == "fields_not_of_kind" else HIGH_RISK_FIELD,
                    f"sent to review: rule {rule.id} would auto-apply, but {detail}",
                    self.document.default_review,
                )
        if rule.action is Action.AUTO_APPLY and not rule.allow_high_risk:
            risky_fields = sorted({c.field for c in p.changes} & self._high_risk_fields)
            if risky_fields:
                return Route(
                    Action.REVIEW,
                    HIGH_RISK_FIELD,
                    f"sent to review: rule {rule.id} would auto-apply, but {', '.join(risky_fields)} "
                    "is a high-risk field",
                    self.document.default_review,
                )
            risky_flags = sorted(evidence_flags(p) & set(self.document.high_risk_evidence))
            if risky_flags:
                return Route(
                    Action.REVIEW,
                    HIGH_RISK_EVIDENCE,
                    f"sent to review: rule {rule.id} would auto-apply, but the evidence raises "
                    f"{', '.join(risky_flags)}",
                    self.document.default_review,
                )
        review = (rule.review or self.document.default_review) if rule.action is Action.REVIEW else None
        return Route(rule.action, rule.id, self._explain(rule, p), review)

    @staticmethod
    def _explain(rule: Rule, p: Proposal) -> str:
        verb = {Action.AUTO_APPLY: "auto-applied", Action.REVIEW: "sent to review", Action.REJECT: "rejected"}
        text = f"{verb[rule.action]}: rule {rule.id}"
        if rule.when.min_confidence is not None:
            text += f", confidence {p.confidence:.2f} ≥ {rule.when.min_confidence:.2f}"
        elif rule.when.max_confidence is not None:
            text += f", confidence {p.confidence:.2f} ≤ {rule.when.max_confidence:.2f}"
        if rule.when.min_confidence_bound is not None and stated_bound(p):
            text += f", lower bound {confidence_bound(p):.3f} ≥ {rule.when.min_confidence_bound:.2f}"
        if rule.action is Action.REJECT:
            text += f" ({rule.reason})"
        return text
