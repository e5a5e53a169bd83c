"""Base model and value types shared by every contract."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

# A CRM property value as CRMs expose it over their APIs: a JSON scalar.
PropertyValue = str | int | float | bool | None


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a timezone (UTC)")
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_require_utc)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def is_empty(value: PropertyValue) -> bool:
    """CRMs represent an unset property as null or the empty string."""
    return value is None or (isinstance(value, str) and value.strip() == "")


class Contract(BaseModel):
    """Immutable, strict about unknown fields: a typo in a producer is an error, not silent data."""

    model_config = ConfigDict(frozen=True, extra="forbid")
