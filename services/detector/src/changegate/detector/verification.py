"""Email verification: a verifier's result becomes an ``email_status`` proposal in one vocabulary.

A ``verification_result`` event (source system ``zerobounce``, ``neverbounce`` or ``kickbox``, or any
other system naming the verifier in a ``verifier`` property) carries
``{"email": ..., "status": <raw>}`` (``result`` is read when ``status`` is absent, the field name
NeverBounce and Kickbox use) plus optional ``sub_status`` (ZeroBounce) and flags ``disposable`` /
``accept_all`` (Kickbox). The raw status is mapped to one of six canonical statuses:

``valid``, ``invalid``, ``risky``, ``catch_all``, ``unknown``, ``disposable``.

Raw values are compared lower-cased with ``-`` and spaces read as ``_`` (so ``catch-all`` and
``Catch All`` are the same key). An unrecognised raw value maps to ``unknown``, with the raw value
and ``"recognised": false`` in the evidence.

ZeroBounce — field ``status`` (+ ``sub_status``); source: ZeroBounce API v2 docs, "Status Codes"
(zerobounce.net/docs/email-validation-api-quickstart).

=============  ============  ======================================================================
raw status     canonical     why
=============  ============  ======================================================================
valid          valid         mailbox confirmed
invalid        invalid       mailbox or domain does not exist / rejects mail
catch-all      catch_all     domain accepts every address; mailbox unconfirmable
unknown        unknown       server unreachable, greylisted, timeout …
spamtrap       invalid       a believed spam trap: must never be mailed, treat as undeliverable
abuse          risky         deliverable, but its owner is known to report mail as abuse
do_not_mail    risky         deliverable but not to be mailed (role-based, toxic, global
                             suppression, possible trap, MX forward …)
do_not_mail    disposable    …with ``sub_status`` ``disposable``: a temporary-mailbox service
=============  ============  ======================================================================

NeverBounce — field ``result`` (text, or the numeric code of bulk exports); source: NeverBounce
API v4 docs, "Result Codes" (developers.neverbounce.com/docs/result-codes).

=============  ============  ======================================================================
raw result     canonical     why
=============  ============  ======================================================================
valid / 0      valid         verified as a real, deliverable address
invalid / 1    invalid       verified as not deliverable
disposable / 2 disposable    a temporary / disposable email service
catchall / 3   catch_all     server accepts all mail; address unverifiable
unknown / 4    unknown       the server could not be reached or did not answer
=============  ============  ======================================================================

Kickbox — field ``result`` + boolean flags ``disposable``, ``accept_all``; source: Kickbox API
docs, "Verification response" (docs.kickbox.com). Precedence: undeliverable, then the flags, then
the result.

==========================  ============  =========================================================
raw                         canonical     why
==========================  ============  =========================================================
undeliverable               invalid       the address does not exist or rejects mail (wins over
                                          flags: a dead mailbox is dead whoever hosts it)
``disposable: true``        disposable    a disposable-address provider
``accept_all: true``        catch_all     the domain accepts all mail (Kickbox then says risky)
deliverable                 valid         the mailbox accepted the address
risky                       risky         low quality or low deliverability
unknown                     unknown       no answer from the server
==========================  ============  =========================================================

Any other verifier (e.g. source system ``verifier`` with no known ``verifier`` property) is read in
the canonical vocabulary itself: a raw value already canonical passes through, anything else is
``unknown``.

The proposal is made only if the verified email equals the record's current email (compared
trimmed and case-insensitively): a result for an address the record no longer has is stale. It is
not made when the status would not change, nor (by default) when an inconclusive ``unknown`` result
would replace a definite one (``VerificationConfig.unknown_replaces_known``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from changegate.core.contracts import (
    CrmEvent,
    CrmEventKind,
    FieldChange,
    Proposal,
    ProposalKind,
    Trigger,
)
from changegate.core.contracts.base import PropertyValue, is_empty
from changegate.detector import reliability
from changegate.detector.config import VerificationConfig
from changegate.detector.proposals import build_proposal

DETECTOR = "verification"


class EmailStatus(StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    RISKY = "risky"
    CATCH_ALL = "catch_all"
    UNKNOWN = "unknown"
    DISPOSABLE = "disposable"


# Keys are normalised raw values (see _norm).
ZEROBOUNCE: Mapping[str, EmailStatus] = {
    "valid": EmailStatus.VALID,
    "invalid": EmailStatus.INVALID,
    "catch_all": EmailStatus.CATCH_ALL,
    "unknown": EmailStatus.UNKNOWN,
    "spamtrap": EmailStatus.INVALID,
    "abuse": EmailStatus.RISKY,
    "do_not_mail": EmailStatus.RISKY,
}
ZEROBOUNCE_SUB_STATUS: Mapping[tuple[str, str], EmailStatus] = {
    ("do_not_mail", "disposable"): EmailStatus.DISPOSABLE,
}
NEVERBOUNCE: Mapping[str, EmailStatus] = {
    "valid": EmailStatus.VALID,
    "invalid": EmailStatus.INVALID,
    "disposable": EmailStatus.DISPOSABLE,
    "catchall": EmailStatus.CATCH_ALL,
    "unknown": EmailStatus.UNKNOWN,
    "0": EmailStatus.VALID,
    "1": EmailStatus.INVALID,
    "2": EmailStatus.DISPOSABLE,
    "3": EmailStatus.CATCH_ALL,
    "4": EmailStatus.UNKNOWN,
}
KICKBOX: Mapping[str, EmailStatus] = {
    "deliverable": EmailStatus.VALID,
    "undeliverable": EmailStatus.INVALID,
    "risky": EmailStatus.RISKY,
    "unknown": EmailStatus.UNKNOWN,
}
GENERIC: Mapping[str, EmailStatus] = {s.value: s for s in EmailStatus}
VOCABULARIES: Mapping[str, Mapping[str, EmailStatus]] = {
    "zerobounce": ZEROBOUNCE,
    "neverbounce": NEVERBOUNCE,
    "kickbox": KICKBOX,
}
GENERIC_VERIFIER = "generic"
DEFINITE = frozenset({EmailStatus.VALID, EmailStatus.INVALID, EmailStatus.DISPOSABLE})


class VerificationReason(StrEnum):
    """Why a verification result did or did not become a proposal (a low-cardinality metric label)."""

    PROPOSED = "proposed"
    NOT_VERIFICATION = "not_verification"  # event kind is not verification_result
    MISSING_EMAIL = "missing_email"  # the result names no email
    MISSING_STATUS = "missing_status"  # the result has no status / result
    RECORD_EMAIL_UNKNOWN = "record_email_unknown"  # the detector knows no email for the record
    STALE = "stale"  # the result is for another address than the record's current one
    NOOP = "noop"  # the status would not change
    INCONCLUSIVE = "inconclusive"  # unknown would replace a definite status


@dataclass(frozen=True, slots=True)
class Mapped:
    """A raw verifier answer in the canonical vocabulary, with how it was read."""

    verifier: str
    status: EmailStatus
    recognised: bool
    basis: str  # e.g. "status do_not_mail + sub_status disposable", "flag accept_all"


@dataclass(frozen=True, slots=True)
class VerificationResult:
    proposal: Proposal | None
    reason: VerificationReason


def verifier_of(event: CrmEvent) -> str:
    """The verifier whose vocabulary the event speaks: its source system, else a ``verifier`` property."""
    system = event.source_system.strip().casefold()
    if system in VOCABULARIES:
        return system
    named = event.properties.get("verifier")
    if not is_empty(named) and str(named).strip().casefold() in VOCABULARIES:
        return str(named).strip().casefold()
    return GENERIC_VERIFIER


def map_status(verifier: str, raw: PropertyValue, properties: Mapping[str, PropertyValue]) -> Mapped:
    """Map one verifier's raw status (plus sub-status / flags from ``properties``) to a canonical status."""
    key = _norm(raw)
    if verifier == "zerobounce":
        sub = _norm(properties.get("sub_status"))
        if (key, sub) in ZEROBOUNCE_SUB_STATUS:
            return Mapped(verifier, ZEROBOUNCE_SUB_STATUS[key, sub], True, f"status {key} + sub_status {sub}")
    if verifier == "kickbox" and key != "undeliverable":
        for flag, status in (("disposable", EmailStatus.DISPOSABLE), ("accept_all", EmailStatus.CATCH_ALL)):
            if _truthy(properties.get(flag)):
                return Mapped(verifier, status, True, f"flag {flag}")
    table = VOCABULARIES.get(verifier, GENERIC)
    if key in table:
        return Mapped(verifier, table[key], True, f"status {key}")
    return Mapped(verifier, EmailStatus.UNKNOWN, False, f"unrecognised status {raw!r}")


def propose_verification(
    event: CrmEvent, known: Mapping[str, Any], config: VerificationConfig
) -> VerificationResult:
    """A verification result, compared with the record as known, as an email-status proposal."""
    if event.kind is not CrmEventKind.VERIFICATION_RESULT:
        return VerificationResult(None, VerificationReason.NOT_VERIFICATION)
    props = event.properties
    verified_email = props.get("email")
    if is_empty(verified_email):
        return VerificationResult(None, VerificationReason.MISSING_EMAIL)
    raw = props.get("status") if "status" in props else props.get("result")
    if is_empty(raw):
        return VerificationResult(None, VerificationReason.MISSING_STATUS)
    current_email = known.get(config.email_field)
    if is_empty(current_email):
        return VerificationResult(None, VerificationReason.RECORD_EMAIL_UNKNOWN)
    if _email_key(verified_email) != _email_key(current_email):
        return VerificationResult(None, VerificationReason.STALE)

    mapped = map_status(verifier_of(event), raw, props)
    previous: PropertyValue = known.get(config.status_field)
    previous_key = _norm(previous)
    if previous_key == mapped.status.value:
        return VerificationResult(None, VerificationReason.NOOP)
    if (
        mapped.status is EmailStatus.UNKNOWN
        and previous_key in DEFINITE
        and not config.unknown_replaces_known
    ):
        return VerificationResult(None, VerificationReason.INCONCLUSIVE)

    confidence = config.confidence_for(mapped.verifier, mapped.status.value)
    raw_text = str(raw).strip()
    sub_status = props.get("sub_status")
    if not is_empty(sub_status):
        raw_text = f"{raw_text}/{str(sub_status).strip()}"
    was = "unset" if is_empty(previous) else str(previous)
    if mapped.recognised:
        said = f"{mapped.verifier} verified the record's current email as {raw_text}"
    else:
        said = (
            f"{mapped.verifier} returned the unrecognised status {raw_text!r} for the record's current email"
        )
    rationale = (
        f"{said} ({mapped.basis} → {mapped.status.value}); "
        f"{config.status_field}: {was} → {mapped.status.value}"
    )
    status_cell = mapped.status.value if mapped.recognised else "unrecognised"
    cells = [reliability.Cell(reliability.cell(DETECTOR, mapped.verifier, status_cell), config.status_field)]
    flags = {f: props[f] for f in ("disposable", "accept_all", "role", "free") if f in props}
    changes = [FieldChange(field=config.status_field, previous=previous, proposed=mapped.status.value)]
    evidence: dict[str, Any] = {
        "verifier": mapped.verifier,
        "email": verified_email,
        "raw_status": raw,
        "raw_sub_status": sub_status,
        "flags": flags,
        "reason": props.get("reason"),
        "canonical_status": mapped.status.value,
        "recognised": mapped.recognised,
        "mapping_basis": mapped.basis,
        "source_confidence": event.confidence,
        reliability.BASIS: reliability.basis(cells, confidence, reliability.PriorFrom.CONFIGURED),
    }
    proposal = build_proposal(
        detector=DETECTOR,
        kind=ProposalKind.EMAIL_VERIFICATION,
        object_type=event.object_type,
        record_id=event.record_id,
        changes=changes,
        system=event.source_system,
        source_event_id=event.source_event_id,
        trigger=Trigger.VERIFICATION,
        confidence=confidence,
        rationale=rationale,
        evidence=evidence,
    )
    return VerificationResult(proposal, VerificationReason.PROPOSED)


def _norm(value: PropertyValue) -> str:
    if is_empty(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return "_".join(str(value).strip().casefold().replace("-", " ").split())


def _email_key(value: PropertyValue) -> str:
    return str(value).strip().casefold()


def _truthy(value: PropertyValue) -> bool:
    if isinstance(value, str):
        return value.strip().casefold() in {"true", "yes", "1", "y"}
    return bool(value) if value is not None else False
