"""Base model and value types shared by every contract."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, StringConstraints

# Limits of what one event may carry (HubSpot allows 65,536 characters in a property value).
MAX_PROPERTIES = 1_000
MAX_PROPERTY_NAME_LENGTH = 256
MAX_PROPERTY_VALUE_LENGTH = 65_536

# A CRM property name and value as CRMs expose them over their APIs: a JSON scalar.
PropertyName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROPERTY_NAME_LENGTH)]
PropertyValue = (
    Annotated[str, StringConstraints(max_length=MAX_PROPERTY_VALUE_LENGTH)] | int | float | bool | None
)


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
