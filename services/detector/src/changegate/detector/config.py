"""Configuration of the rule detectors: lifecycle transitions, owner reassignment, email verification.

Each model is plain JSON (pydantic-settings reads it from one environment variable, e.g.
``CHANGEGATE_LIFECYCLE='{"score_threshold": 0.85}'``); every field has a documented default, so an
empty object, or no variable at all, gives the behaviour described here. Unknown keys are refused:
a typo in a deployment is an error at start-up, not a silently ignored rule.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# HubSpot's default lifecycle stages (internal values), earliest first.
HUBSPOT_STAGE_ORDER: tuple[str, ...] = (
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
    "other",
)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------
# Lifecycle


class DefinedEvent(_Config):
    """One row of the defined-event table: an event (and optionally a form type) moves to a stage."""

    event: str = Field(min_length=1, description="value of the event's `event` property, e.g. meeting_booked")
    form_type: str | None = Field(
        None,
        min_length=1,
        description="when set, only events whose `form_type` property equals it match (case-insensitive);"
        " a row with a form type wins over a row without one for the same event",
    )
    stage: str = Field(min_length=1, description="lifecycle stage the event moves the record to")
    confidence: float | None = Field(
        None, ge=0, le=1, description="confidence of this row's proposals; default: defined_event_confidence"
    )


def _default_defined_events() -> list[DefinedEvent]:
    return [
        DefinedEvent(event="form_submission", form_type="newsletter_signup", stage="subscriber"),
        DefinedEvent(event="form_submission", form_type="content_download", stage="lead"),
        DefinedEvent(event="form_submission", form_type="contact_us", stage="lead"),
        DefinedEvent(event="form_submission", form_type="demo_request", stage="marketingqualifiedlead"),
        DefinedEvent(event="form_submission", form_type="pricing_request", stage="marketingqualifiedlead"),
        DefinedEvent(event="meeting_booked", stage="salesqualifiedlead"),
        DefinedEvent(event="deal_created", stage="opportunity"),
        DefinedEvent(event="deal_closed_won", stage="customer"),
    ]


class LifecycleConfig(_Config):
    """Lifecycle-stage transitions from defined events (trigger defined_event) and scores (ai_score).

    Defaults: HubSpot stage order; the defined-event table of ``_default_defined_events`` (newsletter
    signup → subscriber, content download / contact-us form → lead, demo or pricing request →
    marketingqualifiedlead, meeting booked → salesqualifiedlead, deal created → opportunity, deal
    closed won → customer); defined events at confidence 1.0; a score of at least 0.8 from any source
    proposes salesqualifiedlead; never a backwards move.
    """

    stage_field: str = Field("lifecyclestage", min_length=1, description="CRM property holding the stage")
    stage_order: list[str] = Field(
        default_factory=lambda: list(HUBSPOT_STAGE_ORDER),
        min_length=1,
        description="stages earliest first (compared case-insensitively); a move to an earlier stage is"
        " backwards",
    )
    defined_events: list[DefinedEvent] = Field(
        default_factory=_default_defined_events, description="defined event → stage table"
    )
    defined_event_confidence: float = Field(
        1.0, ge=0, le=1, description="confidence of a defined-event proposal whose row sets none"
    )
    score_threshold: float = Field(
        0.8, ge=0, le=1, description="a score at or above it proposes score_stage (trigger ai_score)"
    )
    score_stage: str = Field("salesqualifiedlead", min_length=1, description="stage a high score proposes")
    score_sources: list[str] = Field(
        default_factory=list,
        description="source systems whose scores are trusted (case-insensitive); empty: any source",
    )
    allow_backwards: bool = Field(
        False, description="propose moves to an earlier stage, or from a stage missing from stage_order"
    )

    @model_validator(mode="after")
    def _stages_are_ordered(self) -> Self:
        known = [s.casefold() for s in self.stage_order]
        if len(set(known)) != len(known):
            raise ValueError("stage_order lists a stage twice")
        for stage, where in [(self.score_stage, "score_stage")] + [
            (row.stage, f"defined_events[{i}] ({row.event})") for i, row in enumerate(self.defined_events)
        ]:
            if stage.casefold() not in known:
                raise ValueError(f"{where}: stage {stage!r} is not in stage_order")
        return self


# --------------------------------------------------------------------------------------------------
# Owner


class Territory(_Config):
    """A territory: records in this country (and state, when set) belong to ``owner``."""

    country: str = Field(min_length=1, description="country name or code; normalised through country_aliases")
    state: str | None = Field(
        None,
        min_length=1,
        description="state / region; normalised through state_aliases; unset: whole country",
    )
    owner: str = Field(min_length=1, description="CRM owner id")


def _default_country_aliases() -> dict[str, str]:
    return {
        "united states": "us",
        "united states of america": "us",
        "usa": "us",
        "u.s.": "us",
        "u.s.a.": "us",
        "united kingdom": "gb",
        "uk": "gb",
        "great britain": "gb",
        "england": "gb",
        "germany": "de",
        "deutschland": "de",
        "france": "fr",
        "canada": "ca",
        "australia": "au",
        "netherlands": "nl",
        "the netherlands": "nl",
        "spain": "es",
        "italy": "it",
    }


def _alias_key(text: str) -> str:
    return " ".join(text.split()).casefold()


class OwnerConfig(_Config):
    """Owner reassignment rules (trigger rule; the policy always sends them to review).

    Defaults: no territories, no round-robin rotation and no fallback owner, so nothing is proposed
    until a deployment configures them; a small alias table for common country names.
    """

    owner_field: str = Field("hubspot_owner_id", min_length=1, description="CRM property holding the owner")
    country_field: str = Field("country", min_length=1)
    state_field: str = Field("state", min_length=1)
    territories: list[Territory] = Field(
        default_factory=list,
        description="country (+ state) → owner; a row with a matching state wins over a country-only row,"
        " then the first row wins",
    )
    country_aliases: dict[str, str] = Field(
        default_factory=_default_country_aliases,
        description="lower-case spelling → canonical key, applied to records and territories alike;"
        " unlisted values compare case- and whitespace-insensitively",
    )
    state_aliases: dict[str, str] = Field(
        default_factory=dict, description="lower-case spelling → canonical key, e.g. {'california': 'ca'}"
    )
    round_robin: list[str] = Field(
        default_factory=list,
        description="owner ids taking unowned records in turn: round_robin[next_index % len];"
        " list an owner twice to give them twice the share",
    )
    fallback_owner: str | None = Field(
        None,
        min_length=1,
        description="takes the records of a deactivated owner when no territory matches; unset: round-robin",
    )
    territory_confidence: float = Field(0.9, ge=0, le=1, description="confidence of a territory proposal")
    fallback_confidence: float = Field(0.7, ge=0, le=1, description="confidence of a fallback-owner proposal")
    round_robin_confidence: float = Field(0.6, ge=0, le=1, description="confidence of a round-robin pick")

    @field_validator("country_aliases", "state_aliases", mode="after")
    @classmethod
    def _normalise_aliases(cls, value: dict[str, str]) -> dict[str, str]:
        return {_alias_key(k): _alias_key(v) for k, v in value.items()}

    @model_validator(mode="after")
    def _round_robin_ids_are_set(self) -> Self:
        if any(not owner.strip() for owner in self.round_robin):
            raise ValueError("round_robin lists an empty owner id")
        return self


# --------------------------------------------------------------------------------------------------
# Verification


def _default_status_confidence() -> dict[str, float]:
    return {
        "valid": 0.95,
        "invalid": 0.95,
        "disposable": 0.95,
        "catch_all": 0.7,
        "risky": 0.7,
        "unknown": 0.5,
    }


CANONICAL_EMAIL_STATUSES: frozenset[str] = frozenset(_default_status_confidence())


class VerificationConfig(_Config):
    """Email verification results → email-status proposals (trigger verification).

    Default confidences (how sure the detector is that the canonical status is right): valid, invalid
    and disposable 0.95 (the verifier made a definite SMTP / list check); catch_all and risky 0.7
    (definite about the domain, not the mailbox); unknown 0.5. ``verifier_confidence`` overrides them
    per verifier and status, e.g. {"kickbox": {"valid": 0.97}}.
    """

    email_field: str = Field("email", min_length=1, description="CRM property holding the email address")
    status_field: str = Field("email_status", min_length=1, description="CRM property the status goes to")
    status_confidence: dict[str, float] = Field(
        default_factory=_default_status_confidence,
        description="confidence per canonical status (valid, invalid, risky, catch_all, unknown, disposable);"
        " statuses left out keep their default",
    )
    verifier_confidence: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="per-verifier overrides of status_confidence"
    )
    unknown_replaces_known: bool = Field(
        False,
        description="propose an inconclusive `unknown` result over a definite valid / invalid / disposable"
        " status (off: a verifier time-out does not downgrade a known answer)",
    )

    @model_validator(mode="after")
    def _confidences_are_sane(self) -> Self:
        tables = [("status_confidence", self.status_confidence)] + [
            (f"verifier_confidence.{v}", t) for v, t in self.verifier_confidence.items()
        ]
        for name, table in tables:
            for status, value in table.items():
                if status not in CANONICAL_EMAIL_STATUSES:
                    raise ValueError(f"{name}: {status!r} is not a canonical email status")
                if not 0 <= value <= 1:
                    raise ValueError(f"{name}.{status}: confidence {value} is outside [0, 1]")
        return self

    @field_validator("status_confidence", mode="after")
    @classmethod
    def _fill_defaults(cls, value: dict[str, float]) -> dict[str, float]:
        return {**_default_status_confidence(), **value}

    def confidence_for(self, verifier: str, status: str) -> float:
        override = self.verifier_confidence.get(verifier, {})
        return override.get(status, self.status_confidence[status])
