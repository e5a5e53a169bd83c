"""Base model and value types shared by every contract."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict

# A CRM property value as CRMs expose it over their APIs: a JSON scalar.
PropertyValue = str | int | float | bool | None


# Timezone-aware, checked in pydantic-core (a Python validator here cost ~8 µs per timestamp on
# the hot path). Every producer writes UTC; an offset a foreign producer sends is kept, not lost.
UtcDatetime = AwareDatetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def is_empty(value: PropertyValue) -> bool:
    """CRMs represent an unset property as null or the empty string."""
    return value is None or (isinstance(value, str) and value.strip() == "")


class Contract(BaseModel):
    """Immutable, strict about unknown fields: a typo in a producer is an error, not silent data."""

    # NaN and Infinity are not JSON: refused at the door rather than written out as null.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
