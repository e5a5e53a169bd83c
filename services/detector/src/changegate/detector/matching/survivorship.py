"""Survivorship: which of two duplicates survives a merge, and which value each field keeps.

Rule, in order: the most complete record survives (most non-empty business fields); on a tie the
oldest (``createdate``, then the smaller id); on a tie again the most recently active
(``lastmodifieddate``). Field by field the survivor keeps its own values; a field empty on the
survivor takes the other record's value; fields where both hold different values stay the
survivor's and are listed as conflicts for the reviewer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from changegate.core.contracts.base import is_empty

# System fields: never counted for completeness, never carried over.
SYSTEM_FIELDS = frozenset(
    {"hs_object_id", "createdate", "lastmodifieddate", "hs_merged_object_ids", "hs_lastmodifieddate"}
)


@dataclass(frozen=True)
class Survivorship:
    survivor: str
    merged: str
    rule: str
    fills: dict[str, Any] = field(default_factory=dict)  # field -> value taken from the merged record
    conflicts: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # field -> (kept, dropped)


def _completeness(props: dict[str, Any]) -> int:
    return sum(1 for k, v in props.items() if k not in SYSTEM_FIELDS and not is_empty(v))


def choose(a_id: str, a: dict[str, Any], b_id: str, b: dict[str, Any]) -> Survivorship:
    ca, cb = _completeness(a), _completeness(b)
    if ca != cb:
        rule = "most_complete"
        keep_a = ca > cb
    elif (
        (a.get("createdate") or "") != (b.get("createdate") or "")
        and a.get("createdate")
        and b.get("createdate")
    ):
        rule = "oldest"
        keep_a = str(a["createdate"]) < str(b["createdate"])
    elif (a.get("lastmodifieddate") or "") != (b.get("lastmodifieddate") or ""):
        rule = "most_recent_activity"
        keep_a = str(a.get("lastmodifieddate") or "") > str(b.get("lastmodifieddate") or "")
    else:
        rule = "oldest_id"
        keep_a = (len(a_id), a_id) <= (len(b_id), b_id)
    (sid, s), (mid, m) = ((a_id, a), (b_id, b)) if keep_a else ((b_id, b), (a_id, a))
    fills, conflicts = differences(s, m)
    return Survivorship(sid, mid, rule, fills, conflicts)


def differences(
    kept: dict[str, Any], merged: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """(fields empty on the survivor that the merged record fills, fields where both differ)."""
    fills, conflicts = {}, {}
    for name in sorted(set(kept) | set(merged)):
        if name in SYSTEM_FIELDS:
            continue
        value, other = kept.get(name), merged.get(name)
        if is_empty(other):
            continue
        if is_empty(value):
            fills[name] = other
        elif value != other:
            conflicts[name] = (value, other)
    return fills, conflicts


@dataclass(frozen=True)
class ClusterSurvivorship:
    """Survivorship of a cluster: one survivor, every other record merged into it."""

    survivor: str
    merged: tuple[str, ...]
    rules: dict[str, str]  # merged record -> the rule that ranked the survivor above it
    fills: dict[str, Any] = field(default_factory=dict)
    # field -> {"kept": the survivor's value, "dropped": {merged record: its other value}}
    conflicts: dict[str, dict[str, Any]] = field(default_factory=dict)


def choose_cluster(records: dict[str, dict[str, Any]]) -> ClusterSurvivorship:
    """The pairwise rule applied as a knock-out in record-id order: the record that wins every
    duel survives. Fields empty on it take the first value the merged records offer (in the same
    order); different values are kept and listed as conflicts."""
    if not records:
        raise ValueError("a cluster has at least one record")
    order = sorted(records, key=lambda rid: (len(rid), rid))
    survivor = order[0]
    for rid in order[1:]:
        survivor = choose(survivor, records[survivor], rid, records[rid]).survivor
    kept = records[survivor]
    merged = tuple(rid for rid in order if rid != survivor)
    rules: dict[str, str] = {}
    fills: dict[str, Any] = {}
    conflicts: dict[str, dict[str, Any]] = {}
    for rid in merged:
        rules[rid] = choose(survivor, kept, rid, records[rid]).rule
        pair_fills, pair_conflicts = differences(kept, records[rid])
        for name, value in pair_fills.items():
            fills.setdefault(name, value)
        for name, (value, dropped) in pair_conflicts.items():
            conflicts.setdefault(name, {"kept": value, "dropped": {}})["dropped"][rid] = dropped
    return ClusterSurvivorship(survivor, merged, rules, fills, conflicts)
