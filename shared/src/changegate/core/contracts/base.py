"""Base model and value types shared by every contract."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

# Limits of what one event may carry (HubSpot allows 65,536 characters in a property value).
MAX_PROPERTIES = 1_000
MAX_PROPERTY_NAME_LENGTH = 256
MAX_PROPERTY_VALUE_LENGTH = 65_536
# RFC 8785, which every signature and the audit hash use, holds integers within +-(2**53 - 1) only
# (I-JSON's interoperable range, where every integer is exact); HubSpot sends numbers as strings, so
# a number beyond it is refused where it enters rather than failing when a proposal is signed.
MAX_SAFE_INTEGER = 2**53 - 1


def _within_safe_integers(value: object) -> object:
    if type(value) is int and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise ValueError(
            f"integer beyond +-{MAX_SAFE_INTEGER} (2**53 - 1), the range RFC 8785 signs; send it as a string"
        )
    return value


# A CRM property name and value as CRMs expose them over their APIs: a JSON scalar.
PropertyName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROPERTY_NAME_LENGTH)]
PropertyValue = Annotated[
    Annotated[str, StringConstraints(max_length=MAX_PROPERTY_VALUE_LENGTH)]
    | Annotated[int, Field(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]
    | float
    | bool
    | None,
    # checked before the union, or pydantic would take the integer as a rounded float
    BeforeValidator(_within_safe_integers),
]


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
