"""Reviewers' decisions → threshold suggestions, never applied by themselves.

Per review rule and confidence band, how reviewers decided what the rule sent them: approved
unchanged, modified (approved with changes) or rejected, and how long they took. Where a rule's
proposals above some confidence were approved unchanged often enough and never corrected, a
suggestion says so with its evidence ("rule X: 412 of 412 approved unchanged at or above 0.93 in 30
days; 0 rejected or modified — consider auto-apply at or above 0.93") and :func:`candidate` writes a
candidate policy with an auto-apply rule before the review rule, to run in shadow. Proposals no
rule matched (the policy's default route, when it is review) count per kind, since the default has
no condition to narrow: a suggestion for them appends an auto-apply rule for that kind after every
other rule, so it takes only what the default took. A suggested rule keeps the policy's evidence
floor (the strictest ``min_confidence_bound`` of its auto-apply rules). The candidate is
loaded like any policy file, so the guardrails refuse what would auto-apply a merge, an owner
change or a human-only field: such a suggestion is reported as refused and left out of the file.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import yaml
from changegate.core.db import Queryable
from changegate.policy.engine import Action, Policy, PolicyError

THRESHOLDS = (0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
BAND_EDGES = (0.0, *THRESHOLDS, 1.0)


@dataclass(frozen=True)
class Decided:
    """One human decision on a proposal a rule sent to review."""

    rule: str
    kind: str
    confidence: float
    outcome: str  # approved | approved_with_changes | rejected
    seconds: float  # from proposal to decision

    @property
    def unchanged(self) -> bool:
        return self.outcome == "approved"


@dataclass
class Outcomes:
    approved: int = 0
    modified: int = 0
    rejected: int = 0
    seconds: list[float] = field(default_factory=list)

    def add(self, d: Decided) -> None:
        if d.outcome == "approved":
            self.approved += 1
        elif d.outcome == "approved_with_changes":
            self.modified += 1
        else:
            self.rejected += 1
        self.seconds.append(d.seconds)

    @property
    def decided(self) -> int:
        return self.approved + self.modified + self.rejected

    @property
    def median_seconds(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


def band(confidence: float) -> str:
    for low, high in itertools.pairwise(BAND_EDGES):
        if confidence < high:
            return f"{low:g}-{high:g}"
    return f"{BAND_EDGES[-2]:g}-1"


DEFAULT = "default"  # the rule id of the policy's default route


def route_of(d: Decided) -> str:
    """The rule, or for the default route the default and the kind (it has no other condition)."""
    return f"{DEFAULT} ({d.kind})" if d.rule == DEFAULT else d.rule


def by_band(decided: Iterable[Decided]) -> dict[tuple[str, str], Outcomes]:
    """(rule, confidence band) -> how reviewers decided."""
    table: dict[tuple[str, str], Outcomes] = defaultdict(Outcomes)
    for d in decided:
        table[(route_of(d), band(d.confidence))].add(d)
    return dict(sorted(table.items()))


@dataclass(frozen=True)
class Suggestion:
    rule: str
    threshold: float
    approved: int  # unchanged, at or above the threshold
    modified: int
    rejected: int
    days: int
    refused: str | None = None  # why the guardrails refuse it (None: written to the candidate)
    kind: str | None = None  # for the default route: the kind it is about

    @property
    def evidence(self) -> str:
        n = self.approved + self.modified + self.rejected
        route = f"the default route for {self.kind}" if self.rule == DEFAULT else f"rule {self.rule}"
        return (
            f"{route}: {self.approved} of {n} approved unchanged at or above {self.threshold:g}"
            f" in {self.days} days; {self.rejected} rejected, {self.modified} modified"
            f" — consider auto-apply at or above {self.threshold:g}"
        )


def suggest(
    policy: Policy, decided: Sequence[Decided], days: int, min_support: int = 100, max_corrected: int = 0
) -> list[Suggestion]:
    """Per review rule of ``policy``, the lowest threshold above which at least ``min_support``
    proposals were decided and at most ``max_corrected`` of them rejected or modified (never below
    the least confidence among them: no suggestion reaches where no reviewer has looked)."""
    # the default route is always review (a policy refuses any other)
    review_rules = {r.id for r in policy.document.rules if r.action is Action.REVIEW} | {DEFAULT}
    by_rule: dict[tuple[str, str | None], list[Decided]] = defaultdict(list)
    for d in decided:
        if d.rule in review_rules:
            by_rule[(d.rule, d.kind if d.rule == DEFAULT else None)].append(d)
    out = []
    for (rule, kind), items in sorted(by_rule.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        for t in THRESHOLDS:
            above = [d for d in items if d.confidence >= t]
            corrected = sum(not d.unchanged for d in above)
            if len(above) >= min_support and corrected <= max_corrected:
                # no lower than the evidence reaches: the highest threshold under its least confidence
                t = max(c for c in THRESHOLDS if c <= min(d.confidence for d in above))
                modified = sum(d.outcome == "approved_with_changes" for d in above)
                out.append(
                    Suggestion(
                        rule, t, len(above) - corrected, modified, corrected - modified, days, kind=kind
                    )
                )
                break
    return out


def evidence_floor(document: dict[str, Any]) -> float | None:
    """The strictest ``min_confidence_bound`` among the policy's auto-apply rules (None: it gates
    none on the evidence floor). A suggested rule carries it, so that promoting a suggestion never
    lets through a proposal whose own evidence the policy would otherwise find too thin: reviewers
    approving a rule's proposals says nothing of the evidence behind the next one."""
    floors = [
        float(bound)
        for r in document.get("rules") or []
        if r.get("action") == "auto_apply"
        and (bound := (r.get("when") or {}).get("min_confidence_bound")) is not None
    ]
    return max(floors, default=None)


def _with(document: dict[str, Any], s: Suggestion) -> dict[str, Any]:
    rules = list(document["rules"])
    floor = evidence_floor(document)
    if s.rule == DEFAULT:  # after every rule: only what the default route took
        kind = str(s.kind)
        when: dict[str, Any] = {"kind": [kind], "min_confidence": s.threshold}
        if floor is not None:
            when["min_confidence_bound"] = floor
        rule = {
            "id": f"default-{kind.replace('_', '-')}-suggested-auto",
            "description": f"suggested: {s.evidence}",
            "when": when,
            "action": "auto_apply",
        }
        return {**document, "rules": [*rules, rule]}
    at = next(i for i, r in enumerate(rules) if r.get("id") == s.rule)
    when = dict(rules[at].get("when") or {})
    when["min_confidence"] = max(s.threshold, float(when.get("min_confidence") or 0))
    bounds = [b for b in (floor, when.get("min_confidence_bound")) if b is not None]
    if bounds:
        when["min_confidence_bound"] = max(float(b) for b in bounds)
    rules.insert(
        at,
        {
            "id": f"{s.rule}-suggested-auto",
            "description": f"suggested: {s.evidence}",
            "when": when,
            "action": "auto_apply",
        },
    )
    return {**document, "rules": rules}


def candidate(
    policy: Policy, suggestions: Sequence[Suggestion], version: str
) -> tuple[str, list[Suggestion]]:
    """A candidate policy file with an auto-apply rule per suggestion the guardrails accept, and the
    suggestions with the refusal of each they do not."""
    document = yaml.safe_load(policy.content)
    checked = []
    for s in suggestions:
        try:
            Policy.parse(
                _dump({**_with(document, s), "version": version}).encode(), f"suggestion for {s.rule}"
            )
        except PolicyError as exc:
            checked.append(Suggestion(**{**s.__dict__, "refused": str(exc)}))
            continue
        checked.append(s)
    for s in checked:
        if s.refused is None:
            document = _with(document, s)
    document["version"] = version
    document["description"] = f"candidate suggested from reviewers' decisions, from {policy.version}"
    text = _dump(document)
    Policy.parse(text.encode(), "candidate")  # each passed alone; together too
    return text, checked


def _dump(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


async def decisions(conn: Queryable, since: datetime) -> list[Decided]:
    """Human decisions since ``since`` on proposals the policy sent to review, with their rule."""
    rows = await conn.fetch(
        "SELECT r.rule_id, h.kind, h.confidence, h.outcome,"
        " extract(epoch FROM h.decided_at - h.proposed_at) AS seconds"
        " FROM policy_human_decisions h JOIN policy_routes r USING (proposal_id)"
        " WHERE r.action = 'review' AND h.decided_at >= $1",
        since,
    )
    return [
        Decided(r["rule_id"], r["kind"], r["confidence"], r["outcome"], max(0.0, float(r["seconds"])))
        for r in rows
    ]


def window(days: int, now: datetime) -> datetime:
    return now - timedelta(days=days)
