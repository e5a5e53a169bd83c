"""Static checks of a policy beyond validation: rules that can never match."""

from __future__ import annotations

from changegate.policy.model import Condition, PolicyDocument

_LIST_CRITERIA = ("kind", "object_type", "source_system", "trigger", "fields")


def covers(a: Condition, b: Condition) -> bool:
    """True if every proposal ``b`` matches is also matched by ``a`` (so a rule with ``b`` placed
    after a rule with ``a`` can never match). Conservative: False when unsure."""
    for name in _LIST_CRITERIA:
        wanted_a, wanted_b = getattr(a, name), getattr(b, name)
        if wanted_a is not None and (wanted_b is None or not set(wanted_b) <= set(wanted_a)):
            return False
    if a.previous_empty is not None and a.previous_empty != b.previous_empty:
        return False
    if a.min_confidence is not None and (b.min_confidence is None or b.min_confidence < a.min_confidence):
        return False
    if a.min_confidence_bound is not None and (
        b.min_confidence_bound is None or b.min_confidence_bound < a.min_confidence_bound
    ):
        return False
    if a.max_confidence is not None and (b.max_confidence is None or b.max_confidence > a.max_confidence):
        return False
    if a.evidence_flags_any is not None and (
        b.evidence_flags_any is None or not set(b.evidence_flags_any) <= set(a.evidence_flags_any)
    ):
        return False
    if a.evidence_flags_none is not None and not set(a.evidence_flags_none) <= set(
        b.evidence_flags_none or []
    ):
        return False
    for name in ("proposed_values", "previous_values"):
        wanted_a, wanted_b = getattr(a, name), getattr(b, name)
        if wanted_a is None:
            continue
        if wanted_b is None:
            return False
        for field, allowed in wanted_a.items():
            if field not in wanted_b or not all(v in allowed for v in wanted_b[field]):
                return False
    return True


def shadowed_rules(doc: PolicyDocument) -> list[str]:
    """One warning per rule that an earlier rule always matches first."""
    warnings = []
    for i, rule in enumerate(doc.rules):
        for earlier in doc.rules[:i]:
            if covers(earlier.when, rule.when):
                warnings.append(
                    f"rule {rule.id!r} can never match: rule {earlier.id!r} before it matches "
                    "every proposal it would"
                )
                break
    return warnings
