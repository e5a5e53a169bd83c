"""When are two CRM values the same? The rules every compare-and-set uses (documented in README):

- empty is empty: null, "" and a string of only whitespace are the same value (CRMs store an unset
  property either way, HubSpot as "");
- strings compare after trimming surrounding whitespace; an email compares case-insensitively;
- numbers compare by value, whatever their form: 250, 250.0, "250", "250.00" and "2.5e2" are the
  same (HubSpot returns every property as a string);
- booleans: true/false match "true"/"false" (any case), as HubSpot returns them, and nothing else
  (true is not 1: a conflict goes back to a reviewer rather than guessing);
- anything else compares as written.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

from changegate.core.contracts.base import PropertyValue, is_empty

CASE_INSENSITIVE_FIELDS = frozenset({"email", "work_email", "hs_additional_emails"})


def _number(value: PropertyValue) -> Decimal | None:
    # Never a bool here: ``same`` settles booleans first.
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        if not text or text.lower() in {"nan", "inf", "-inf", "infinity", "-infinity"}:
            return None
        try:
            return Decimal(text)
        except InvalidOperation:
            return None
    return None


def _boolean(value: PropertyValue) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    return None


def same(field: str, a: PropertyValue, b: PropertyValue) -> bool:
    """Whether ``a`` and ``b`` are the same value of ``field`` (see the module's rules)."""
    if is_empty(a) or is_empty(b):
        return is_empty(a) and is_empty(b)
    x, y = _boolean(a), _boolean(b)
    if x is not None or y is not None:
        return x == y
    m, n = _number(a), _number(b)
    if m is not None and n is not None:
        return m == n
    if isinstance(a, str) and isinstance(b, str):
        left, right = a.strip(), b.strip()
        if field in CASE_INSENSITIVE_FIELDS:
            return left.casefold() == right.casefold()
        return left == right
    return a == b


def to_crm_string(value: PropertyValue) -> str:
    """A value as a string-typed CRM (HubSpot) takes it: null clears the property."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
