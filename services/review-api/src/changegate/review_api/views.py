"""What the API and the page show of an item: response models, and building them from rows.

Merge evidence is whatever the detector put in the proposal's ``evidence``; it is read defensively
(any shape, any missing part), so a detector that adds or changes evidence never breaks a page."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
from changegate.core.contracts import FieldChange, Proposal
from changegate.core.contracts.base import PropertyValue
from changegate.review_api.store import Seen
from pydantic import BaseModel, Field

Status = Literal[
    "pending", "approved", "approved_with_changes", "rejected", "expired", "superseded", "auto_approved"
]
Route = Literal["review", "auto_apply", "reject"]


class ApprovalCount(BaseModel):
    given: int = Field(description="distinct approvals so far")
    required: int = Field(description="distinct approvals the route requires (four-eyes: 2)")


class ItemSummary(BaseModel):
    proposal_id: uuid.UUID
    kind: str
    object_type: str
    record_id: str
    other_record_ids: list[str]
    status: Status
    route: Route | None = Field(description="how policy routed it (null: retired before it was routed)")
    queue: str | None = Field(description="the review queue (null: never sent to review)")
    priority: Literal["low", "normal", "high"]
    confidence: float
    source_system: str | None
    rule_id: str | None = Field(description="the policy rule that routed or decided it")
    rationale: str
    changes: list[FieldChange]
    enqueued_at: datetime | None = Field(description="when it was queued for review (null: never)")
    expires_at: datetime | None
    decided_by: str | None
    decided_at: datetime | None
    approvals: ApprovalCount
    execution_status: Literal["applied", "conflict", "failed", "noop"] | None
    version: int = Field(description="changes with every change of the item; the ETag")


class Page(BaseModel):
    items: list[ItemSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


class CurrentValue(BaseModel):
    """Not a live read of the CRM: the latest value changegate has seen for this field."""

    value: PropertyValue
    as_of: datetime
    source: Literal["proposal", "execution"] = Field(
        description="execution: what the executor wrote (or found, on a conflict); proposal: what a "
        "detector saw when it proposed"
    )
    reference: uuid.UUID = Field(description="the execution or proposal it comes from")


class ChangeView(BaseModel):
    field: str
    previous: PropertyValue = Field(description="what the detector saw (the compare-and-set key)")
    proposed: PropertyValue
    final: PropertyValue = Field(description="what the decision applies (differs when a reviewer edited it)")
    edited: bool = Field(description="a reviewer changed the proposed value")
    current: CurrentValue | None
    stale: bool | None = Field(description="the latest value seen differs from previous (null: none seen)")


class Approval(BaseModel):
    identity: str
    at: datetime
    comment: str | None
    changes: list[FieldChange] | None = Field(
        description="the values approved, if edited (null: as proposed)"
    )


class HistoryEvent(BaseModel):
    seq: int
    at: datetime
    event: str = Field(
        description="detected, routed, enqueued, approval, decided, executed, conflicted, failed, noop, "
        "superseded, expired, re-proposed"
    )
    actor: str | None
    detail: dict[str, Any]


class PolicyView(BaseModel):
    route: Route | None
    rule_id: str | None
    policy_version: str | None
    policy_hash: str | None
    explanation: str | None = Field(description="the policy's one line: why this route")


class DecisionView(BaseModel):
    outcome: str
    decided_by: str | None
    decider_kind: str | None = Field(description="human, policy or system")
    decided_at: datetime | None
    explanation: str | None
    comment: str | None


class ExecutionView(BaseModel):
    execution_id: uuid.UUID
    status: Literal["applied", "conflict", "failed", "noop"]
    executed_at: datetime
    error: str | None
    merged_into: str | None
    writes: list[dict[str, Any]]


class MergeField(BaseModel):
    field: str
    values: dict[str, Any] = Field(description="record id -> its value, where the evidence holds one")
    agreement: Literal["agree", "differ", "one_side", "unknown"]
    level: str | None = Field(description="the matcher's comparison level for this field, if scored")
    kept: Any = Field(None, description="the survivor's value after the merge, where the survivorship says")
    taken_from: str | None = Field(
        None, description="the record the kept value comes from, if not the survivor"
    )


class MergePair(BaseModel):
    records: list[str]
    probability: float | None
    levels: dict[str, str]


class MergeView(BaseModel):
    survivor: str
    merged: list[str]
    rule: str | None = Field(description="why this record survives (most complete, oldest, …)")
    records: list[str]
    fields: list[MergeField]
    pairs: list[MergePair]
    weakest_probability: float | None = Field(description="the lowest pair probability in the evidence")


class Detail(ItemSummary):
    rationale: str = Field(description="as it stands now (a re-proposal explains its own values)")
    evidence: dict[str, Any]
    merge: MergeView | None = Field(description="for merges: the records side by side")
    fields: list[ChangeView]
    policy: PolicyView
    required_approvals: int
    approvals_given: list[Approval]
    decision: DecisionView | None
    execution: ExecutionView | None
    history: list[HistoryEvent]
    proposed_at: datetime
    detector: str
    trigger: str
    requested_by: str | None


def summary(row: asyncpg.Record) -> dict[str, Any]:
    proposal = row["proposal"]
    given = row["approvals_given"] if "approvals_given" in row else len(row["approvals"])
    return {
        "proposal_id": row["proposal_id"],
        "kind": row["kind"],
        "object_type": row["object_type"],
        "record_id": row["record_id"],
        "other_record_ids": proposal.get("other_record_ids", []),
        "status": row["status"],
        "route": row["route"],
        "queue": row["queue"],
        "priority": row["priority"],
        "confidence": row["confidence"],
        "source_system": row["source_system"],
        "rule_id": row["rule_id"],
        "rationale": proposal["rationale"],
        "changes": proposal["changes"],
        "enqueued_at": row["enqueued_at"] if row["route"] == "review" or row["queue"] else None,
        "expires_at": row["expires_at"],
        "decided_by": row["decided_by"],
        "decided_at": row["decided_at"],
        "approvals": {"given": given, "required": row["required_approvals"]},
        "execution_status": row["execution_status"],
        "version": row["version"],
    }


def _policy(row: asyncpg.Record) -> PolicyView:
    routed = row["routed_by"] or {}
    decider = row["decider"] or {}
    by = routed if routed.get("kind") == "policy" else decider if decider.get("kind") == "policy" else {}
    explanation = row["explanation"] if row["routed_by"] else row["decision_explanation"]
    return PolicyView(
        route=row["route"],
        rule_id=row["rule_id"],
        policy_version=by.get("policy_version"),
        policy_hash=by.get("policy_hash"),
        explanation=explanation if by or row["routed_by"] else None,
    )


def change_views(
    proposal: Proposal,
    final: list[dict[str, Any]] | None,
    pending_edit: dict[str, Any],
    seen: dict[str, Seen],
) -> list[ChangeView]:
    finals = {c["field"]: c["proposed"] for c in final} if final else {}
    views = []
    for change in proposal.changes:
        value = finals.get(change.field, pending_edit.get(change.field, change.proposed))
        current = seen.get(change.field)
        views.append(
            ChangeView(
                field=change.field,
                previous=change.previous,
                proposed=change.proposed,
                final=value,
                edited=value != change.proposed or type(value) is not type(change.proposed),
                current=CurrentValue(
                    value=current.value,
                    as_of=current.as_of,
                    source=current.source,
                    reference=current.reference,
                )
                if current
                else None,
                stale=None if current is None else current.value != change.previous,
            )
        )
    return views


def _str_map(value: Any) -> dict[str, Any]:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def _level_name(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("level", value.get("name"))
    return None if value is None else str(value)


def _members(evidence: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each member's fields, if the evidence carries them: ``members`` or ``records`` as
    ``{id: {field: value}}``, or a list of ``{record_id|id, properties|fields|values}``."""
    for key in ("members", "records"):
        raw = evidence.get(key)
        if isinstance(raw, dict):
            out = {}
            for rid, props in raw.items():
                props = _str_map(props)
                inner = next(
                    (props[k] for k in ("properties", "fields", "values") if isinstance(props.get(k), dict)),
                    None,
                )
                out[str(rid)] = _str_map(inner) if inner is not None else props
            return out
        if isinstance(raw, list):
            out = {}
            for entry in raw:
                if not isinstance(entry, dict):
                    continue
                rid = entry.get("record_id", entry.get("id"))
                props = next(
                    (entry[k] for k in ("properties", "fields", "values") if isinstance(entry.get(k), dict)),
                    None,
                )
                if rid is not None and props is not None:
                    out[str(rid)] = _str_map(props)
            if out:
                return out
    return {}


def _agreement_of(level: str) -> Literal["agree", "differ", "one_side", "unknown"]:
    """What a matcher's comparison level says when the values are not in the evidence: Splink's
    vocabulary names the levels (exact, similar, partial, …; disagree or else; null or missing)."""
    name = level.casefold()
    if any(word in name for word in ("disagree", "differ", "mismatch", "else")):
        return "differ"
    if any(word in name for word in ("null", "missing", "absent", "unknown")):
        return "unknown"
    return "agree"


def _probability(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def merge_view(proposal: Proposal) -> MergeView:
    evidence = proposal.evidence if isinstance(proposal.evidence, dict) else {}
    survivorship = _str_map(evidence.get("survivorship"))
    survivor = str(survivorship.get("survivor") or proposal.record_id)
    merged = [str(x) for x in survivorship.get("merged") or proposal.other_record_ids]
    records = [survivor, *[m for m in merged if m != survivor]]
    members = _members(evidence)
    for rid in members:
        if rid not in records:
            records.append(rid)
    pairs: list[MergePair] = []
    raw_pairs = evidence.get("pairs")
    for raw in raw_pairs if isinstance(raw_pairs, list) else []:
        if not isinstance(raw, dict):
            continue
        pair_records = raw.get("records")
        pairs.append(
            MergePair(
                records=[str(r) for r in pair_records] if isinstance(pair_records, list) else [],
                probability=_probability(raw.get("probability")),
                levels={
                    f: lvl
                    for f, v in _str_map(raw.get("fields")).items()
                    if (lvl := _level_name(v)) is not None
                },
            )
        )
    # Field levels: of the weakest pair that scored the field (the reviewer's worst case).
    levels: dict[str, str] = {}
    for pair in sorted(pairs, key=lambda p: -(p.probability if p.probability is not None else 1.0)):
        levels.update(pair.levels)
    for f, v in _str_map(evidence.get("fields")).items():
        levels.setdefault(f, _level_name(v) or "")
    # Values: members' own, else what the survivorship and the changes say of the survivor and the others.
    values: dict[str, dict[str, Any]] = {}
    for rid, props in members.items():
        for f, v in props.items():
            values.setdefault(f, {})[rid] = v
    for by_member in values.values():  # a member's fields are all there: one it lacks is empty
        for rid in members:
            by_member.setdefault(rid, None)
    kept: dict[str, Any] = {}
    taken: dict[str, str | None] = {}
    for change in proposal.changes:
        values.setdefault(change.field, {}).setdefault(survivor, change.previous)
        kept[change.field] = change.proposed
    fills = _str_map(survivorship.get("fills"))
    for f, v in fills.items():
        kept[f] = v
        donor = next(
            (rid for rid in merged if values.get(f, {}).get(rid) == v),
            merged[0] if len(merged) == 1 else None,
        )
        taken[f] = donor
        if donor is not None:
            values.setdefault(f, {}).setdefault(donor, v)
    for f, pair in _str_map(survivorship.get("conflicts")).items():
        if isinstance(pair, list | tuple) and len(pair) == 2:
            values.setdefault(f, {}).setdefault(survivor, pair[0])
            if len(merged) == 1:
                values[f].setdefault(merged[0], pair[1])
            kept.setdefault(f, pair[0])
    fields = []
    for f in sorted(set(values) | set(levels)):
        by_record = {rid: values[f][rid] for rid in records if rid in values.get(f, {})}
        present = [v for v in by_record.values() if v not in (None, "")]
        if len(by_record) < 2 and levels.get(f):
            agreement: Literal["agree", "differ", "one_side", "unknown"] = _agreement_of(levels[f])
        elif len(by_record) < 2:
            agreement = "unknown"
        elif len(present) < 2:
            agreement = "one_side" if present else "unknown"
        else:
            agreement = "agree" if len({str(v).strip().casefold() for v in present}) == 1 else "differ"
        fields.append(
            MergeField(
                field=f,
                values=by_record,
                agreement=agreement,
                level=levels.get(f) or None,
                kept=kept.get(f),
                taken_from=taken.get(f),
            )
        )
    probabilities = [p.probability for p in pairs if p.probability is not None]
    rule = survivorship.get("rule")
    return MergeView(
        survivor=survivor,
        merged=merged,
        rule=str(rule) if rule is not None else None,
        records=records,
        fields=fields,
        pairs=pairs,
        weakest_probability=min(probabilities) if probabilities else None,
    )


def detail(row: asyncpg.Record, history_rows: list[asyncpg.Record], seen: dict[str, Seen]) -> Detail:
    proposal = Proposal.model_validate(row["proposal"])
    approvals = [
        Approval(identity=a["identity"], at=a["at"], comment=a.get("comment"), changes=a.get("changes"))
        for a in row["approvals"]
    ]
    # While pending, an edited approval shows the values it approved (what a second approver sees).
    pending_edit = next(
        (
            {c["field"]: c["proposed"] for c in a["changes"]}
            for a in reversed(row["approvals"])
            if a.get("changes")
        ),
        {},
    )
    decider = row["decider"] or {}
    execution = (
        ExecutionView(
            execution_id=row["execution_id"],
            status=row["execution_status"],
            executed_at=row["executed_at"],
            error=row["execution_error"],
            merged_into=row["merged_into"],
            writes=row["execution_writes"] or [],
        )
        if row["execution_id"] is not None
        else None
    )
    history = [
        HistoryEvent(
            seq=0,
            at=proposal.proposed_at,
            event="detected",
            actor=f"{proposal.source.detector}@{proposal.source.detector_version}",
            detail={"source_system": proposal.source.system, "source_event_id": proposal.source.event_id},
        )
    ]
    policy = _policy(row)
    if policy.route is not None:
        routed_at = row["enqueued_at"] if row["routed_by"] else row["decided_at"]
        history.append(
            HistoryEvent(
                seq=0,
                at=routed_at,
                event="routed",
                actor=policy.rule_id or (row["routed_by"] or {}).get("identity"),
                detail={"route": policy.route, "explanation": policy.explanation},
            )
        )
    history += [
        HistoryEvent(seq=h["seq"], at=h["at"], event=h["event"], actor=h["actor"], detail=h["detail"])
        for h in history_rows
    ]
    base = summary(row)
    return Detail(
        **base,
        evidence=proposal.evidence,
        merge=merge_view(proposal) if proposal.kind.value == "merge" else None,
        fields=change_views(
            proposal, row["final_changes"], pending_edit if row["status"] == "pending" else {}, seen
        ),
        policy=policy,
        required_approvals=row["required_approvals"],
        approvals_given=approvals,
        decision=DecisionView(
            outcome=row["status"],
            decided_by=row["decided_by"],
            decider_kind=decider.get("kind"),
            decided_at=row["decided_at"],
            explanation=row["decision_explanation"],
            comment=row["comment"],
        )
        if row["status"] != "pending"
        else None,
        execution=execution,
        history=history,
        proposed_at=proposal.proposed_at,
        detector=f"{proposal.source.detector}@{proposal.source.detector_version}",
        trigger=proposal.source.trigger.value,
        requested_by=proposal.requested_by,
    )
