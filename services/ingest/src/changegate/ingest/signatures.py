"""Who sent a webhook: HubSpot's request signature v3 and the generic sources' HMAC or bearer
token, each checked in constant time, a timestamp where the sender signs one.

HubSpot v3 (its "Validating requests" page): base64 of HMAC-SHA256 keyed with the app's client
secret, over the UTF-8 of method + the full URI HubSpot called (with the characters of
``HUBSPOT_URI_DECODED`` percent-decoded) + the raw body + ``X-HubSpot-Request-Timestamp``
(milliseconds since the epoch); a timestamp more than 5 minutes away from now is refused.

A generic source declares its scheme in the sources file (``HmacAuth`` or ``BearerAuth``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Annotated, Literal, Self

from changegate.ingest.refusals import SignatureError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
HeaderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,100}$")]
# Longer than any Unix time in milliseconds until the year 318857 (and short enough for int()).
MAX_TIMESTAMP_DIGITS = 16

HUBSPOT_SIGNATURE_HEADER = "X-HubSpot-Signature-v3"
HUBSPOT_TIMESTAMP_HEADER = "X-HubSpot-Request-Timestamp"
# HubSpot decodes these percent-encoded characters in the URI before it signs it.
HUBSPOT_URI_DECODED = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}


def hubspot_signed_uri(uri: str) -> str:
    for encoded, char in HUBSPOT_URI_DECODED.items():
        uri = uri.replace(encoded, char).replace(encoded.lower(), char)
    return uri


def hubspot_signature_v3(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    message = method.upper().encode() + hubspot_signed_uri(uri).encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def verify_hubspot_v3(
    secret: str,
    method: str,
    uri: str,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    now_ms: int,
    max_age_seconds: float,
) -> None:
    """Raises SignatureError unless the request carries a valid, fresh v3 signature. The signature
    is checked before the age, so "stale" is said only of a genuine request (a replay, or late)."""
    if not signature:
        raise SignatureError("missing_signature", f"no {HUBSPOT_SIGNATURE_HEADER} header")
    if not timestamp:
        raise SignatureError("missing_timestamp", f"no {HUBSPOT_TIMESTAMP_HEADER} header")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= MAX_TIMESTAMP_DIGITS):
        raise SignatureError(
            "bad_timestamp", f"{HUBSPOT_TIMESTAMP_HEADER} is not milliseconds since the epoch"
        )
    expected = hubspot_signature_v3(secret, method, uri, body, timestamp)
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "surrogateescape")):
        raise SignatureError("bad_signature", f"{HUBSPOT_SIGNATURE_HEADER} does not match the request")
    age = (now_ms - int(timestamp)) / 1000
    if abs(age) > max_age_seconds:
        raise SignatureError(
            "stale_timestamp",
            f"{HUBSPOT_TIMESTAMP_HEADER} is {abs(age):.0f} s {'old' if age > 0 else 'in the future'}: "
            f"requests more than {max_age_seconds:.0f} s away from now are refused (replay protection)",
        )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HmacAuth(_Strict):
    """An HMAC of the raw body (and of a timestamp, when the sender sends one) in a header."""

    type: Literal["hmac"]
    secret_env: EnvName = Field(description="variable (or secret file) holding the shared secret")
    header: HeaderName = "X-Changegate-Signature"
    algorithm: Literal["sha1", "sha256", "sha512"] = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = Field("", max_length=50, description="before the digest in the header, e.g. 'sha256='")
    timestamp_header: HeaderName | None = Field(None, description="header with the signing time")
    timestamp_unit: Literal["seconds", "milliseconds"] = "seconds"
    max_age_seconds: float = Field(300, gt=0, le=86_400, description="older (or further ahead) is refused")
    signed_payload: str = Field(
        "{body}",
        max_length=200,
        description="what is signed: {body} (the raw body) and, with a timestamp header, {timestamp}, "
        "e.g. '{timestamp}.{body}'",
    )

    @model_validator(mode="after")
    def _signs_body_and_timestamp(self) -> Self:
        placeholders = re.findall(r"\{([^{}]*)\}", self.signed_payload)
        if set(placeholders) - {"body", "timestamp"}:
            raise ValueError(
                f"signed_payload: only {{body}} and {{timestamp}} can be used, not {placeholders}"
            )
        if placeholders.count("body") != 1:
            raise ValueError("signed_payload must hold {body} exactly once")
        if self.timestamp_header and "timestamp" not in placeholders:
            # Else a replay with a fresh, unsigned timestamp would pass.
            raise ValueError("signed_payload must hold {timestamp} when timestamp_header is set")
        if "timestamp" in placeholders and not self.timestamp_header:
            raise ValueError("signed_payload uses {timestamp} but no timestamp_header is set")
        return self


class BearerAuth(_Strict):
    """A static token: 'Authorization: Bearer <token>', or the token alone in another header (for
    senders that can only add fixed headers, such as Clay's HTTP API column)."""

    type: Literal["bearer"]
    token_env: EnvName = Field(description="variable (or secret file) holding the token")
    header: HeaderName = "Authorization"


def check_bearer(auth: BearerAuth, secret: bytes, headers: Mapping[str, str]) -> None:
    value = headers.get(auth.header)
    if not value:
        raise SignatureError("missing_token", f"no {auth.header} header")
    if auth.header.lower() == "authorization":
        scheme, _, value = value.partition(" ")
        if scheme.lower() != "bearer":
            raise SignatureError("bad_token", "Authorization is not a Bearer token")
    if not hmac.compare_digest(value.strip().encode("utf-8", "surrogateescape"), secret):
        raise SignatureError("bad_token", "the token is not this source's")


def hmac_digest(auth: HmacAuth, secret: bytes, body: bytes, timestamp: str) -> str:
    head, tail = auth.signed_payload.split("{body}")
    message = (
        head.replace("{timestamp}", timestamp).encode()
        + body
        + tail.replace("{timestamp}", timestamp).encode()
    )
    digest = hmac.new(secret, message, getattr(hashlib, auth.algorithm)).digest()
    return digest.hex() if auth.encoding == "hex" else base64.b64encode(digest).decode()


def check_hmac(auth: HmacAuth, secret: bytes, headers: Mapping[str, str], body: bytes, now: float) -> None:
    given = headers.get(auth.header)
    if not given:
        raise SignatureError("missing_signature", f"no {auth.header} header")
    timestamp = ""
    if auth.timestamp_header:
        timestamp = headers.get(auth.timestamp_header) or ""
        if not timestamp:
            raise SignatureError("missing_timestamp", f"no {auth.timestamp_header} header")
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= MAX_TIMESTAMP_DIGITS):
            raise SignatureError(
                "bad_timestamp", f"{auth.timestamp_header} is not a Unix time in {auth.timestamp_unit}"
            )
    value = given.strip()
    if auth.prefix:
        if not value.startswith(auth.prefix):
            raise SignatureError("bad_signature", f"{auth.header} does not start with {auth.prefix!r}")
        value = value[len(auth.prefix) :]
    if auth.encoding == "hex":
        value = value.lower()
    expected = hmac_digest(auth, secret, body, timestamp)
    if not hmac.compare_digest(expected.encode(), value.encode("utf-8", "surrogateescape")):
        raise SignatureError("bad_signature", f"{auth.header} does not match the request")
    if auth.timestamp_header:
        age = now - int(timestamp) / (1000 if auth.timestamp_unit == "milliseconds" else 1)
        if abs(age) > auth.max_age_seconds:
            raise SignatureError(
                "stale_timestamp",
                f"{auth.timestamp_header} is {abs(age):.0f} s {'old' if age > 0 else 'in the future'}: "
                f"requests more than {auth.max_age_seconds:.0f} s away from now are refused (replays)",
            )
