"""Webhook signatures at their edges: every character HubSpot decodes in the URI it signs, the
freshness bound on both sides, timestamp lengths, header values that are not UTF-8, and each
option of a generic source's HMAC (prefix, hex case, timestamp after the body, milliseconds).
Expected signatures are computed here with hmac, independently of the code under test."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest
from changegate.ingest.mapping import Mapping, MappingSpec
from changegate.ingest.refusals import SignatureError
from changegate.ingest.signatures import (
    HUBSPOT_SIGNATURE_HEADER,
    HUBSPOT_TIMESTAMP_HEADER,
    HUBSPOT_URI_DECODED,
    BearerAuth,
    HmacAuth,
    check_bearer,
    check_hmac,
    verify_hubspot_v3,
)
from changegate.ingest.sources import Source
from pydantic import ValidationError

SECRET = "f3c2a1b0-9e8d-4c7b-a6f5-e4d3c2b1a090"
BODY = b'[{"eventId": 1}]'
NOW_MS = 1_764_000_000_000
NOW = NOW_MS / 1000
MAPPING = Mapping.of(
    MappingSpec.model_validate({"record_id": "id", "object_type": "'contact'", "kind": "'score'"})
)


def hubspot_v3(uri: str, timestamp: str, body: bytes = BODY) -> str:
    message = b"POST" + uri.encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(SECRET.encode(), message, hashlib.sha256).digest()).decode()


def refusal(call: Any) -> SignatureError:
    with pytest.raises(SignatureError) as refused:
        call()
    return refused.value


# --- HubSpot v3 -------------------------------------------------------------------------------------

# The characters HubSpot's "Validating requests" page lists as decoded before signing.
DECODED = {
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


def test_the_decoded_characters_are_hubspots_list() -> None:
    assert HUBSPOT_URI_DECODED == DECODED


@pytest.mark.parametrize(("encoded", "char"), sorted(DECODED.items()))
@pytest.mark.parametrize("case", [str.upper, str.lower])
def test_hubspot_signs_the_uri_with_each_listed_character_decoded(encoded: str, char: str, case: Any) -> None:
    called = f"https://hooks.example.com/v1/webhooks/hubspot?portal=a{case(encoded)}b"
    signed = f"https://hooks.example.com/v1/webhooks/hubspot?portal=a{char}b"
    stamp = str(NOW_MS)
    verify_hubspot_v3(SECRET, "POST", called, BODY, hubspot_v3(signed, stamp), stamp, NOW_MS, 300)
    # Signed over the URI as called (still encoded), it is not HubSpot's signature.
    wrong = hubspot_v3(called, stamp)
    assert refusal(
        lambda: verify_hubspot_v3(SECRET, "POST", called, BODY, wrong, stamp, NOW_MS, 300)
    ).reason == ("bad_signature")


URI = "https://hooks.example.com/v1/webhooks/hubspot"


def verify_at(age_ms: int, max_age_seconds: float = 300) -> None:
    stamp = str(NOW_MS - age_ms)
    verify_hubspot_v3(SECRET, "POST", URI, BODY, hubspot_v3(URI, stamp), stamp, NOW_MS, max_age_seconds)


@pytest.mark.parametrize("age_ms", [300_000, -300_000, 0])
def test_a_hubspot_request_exactly_at_the_bound_is_fresh(age_ms: int) -> None:
    verify_at(age_ms)


@pytest.mark.parametrize("age_ms", [300_001, -300_001])
def test_a_hubspot_request_a_millisecond_beyond_the_bound_is_stale(age_ms: int) -> None:
    refused = refusal(lambda: verify_at(age_ms))
    assert refused.reason == "stale_timestamp"
    assert ("old" if age_ms > 0 else "in the future") in refused.detail


def test_a_hubspot_timestamp_of_16_digits_is_read_and_of_17_is_refused_unread() -> None:
    for digits, reason in ((16, "stale_timestamp"), (17, "bad_timestamp")):
        stamp = "9" * digits
        signature = hubspot_v3(URI, stamp)
        refused = refusal(
            lambda s=stamp, sig=signature: verify_hubspot_v3(SECRET, "POST", URI, BODY, sig, s, NOW_MS, 300)
        )
        assert refused.reason == reason


def test_a_hubspot_signature_that_is_not_utf8_is_a_bad_signature_not_a_crash() -> None:
    stamp = str(NOW_MS)
    refused = refusal(lambda: verify_hubspot_v3(SECRET, "POST", URI, BODY, "\udcff", stamp, NOW_MS, 300))
    assert refused.reason == "bad_signature"


# --- generic sources: HMAC --------------------------------------------------------------------------

KEY = b"generic-source-secret-0123456789"


def digest(message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(KEY, message, getattr(hashlib, algorithm)).digest()


def hmac_auth(**options: Any) -> HmacAuth:
    return HmacAuth.model_validate({"type": "hmac", "secret_env": "S", **options})


def test_a_hex_signature_in_capitals_is_the_same_signature() -> None:
    auth = hmac_auth()
    check_hmac(auth, KEY, {"X-Changegate-Signature": digest(BODY).hex().upper()}, BODY, NOW)


def test_a_signature_without_the_declared_prefix_is_refused_saying_so() -> None:
    auth = hmac_auth(prefix="sha256=")
    check_hmac(auth, KEY, {"X-Changegate-Signature": "sha256=" + digest(BODY).hex()}, BODY, NOW)
    unprefixed = {"X-Changegate-Signature": digest(BODY).hex()}
    refused = refusal(lambda: check_hmac(auth, KEY, unprefixed, BODY, NOW))
    assert refused.reason == "bad_signature"
    assert "does not start with 'sha256='" in refused.detail


def test_a_timestamp_may_be_signed_after_the_body() -> None:
    auth = hmac_auth(timestamp_header="X-T", signed_payload="{body}|{timestamp}")
    stamp = str(int(NOW))
    headers = {"X-T": stamp, "X-Changegate-Signature": digest(BODY + f"|{stamp}".encode()).hex()}
    check_hmac(auth, KEY, headers, BODY, NOW)


def signed_at(stamp: str) -> dict[str, str]:
    encoded = digest(f"{stamp}.".encode() + BODY).hex()
    return {"X-T": stamp, "X-Changegate-Signature": encoded}


def test_a_timestamp_in_milliseconds_is_read_as_milliseconds() -> None:
    auth = hmac_auth(
        timestamp_header="X-T", signed_payload="{timestamp}.{body}", timestamp_unit="milliseconds"
    )
    check_hmac(auth, KEY, signed_at(str(NOW_MS - 299_000)), BODY, NOW)
    stale = refusal(lambda: check_hmac(auth, KEY, signed_at(str(NOW_MS - 301_000)), BODY, NOW))
    assert stale.reason == "stale_timestamp"


@pytest.mark.parametrize(("age", "fresh"), [(300, True), (-300, True), (301, False), (-301, False)])
def test_a_signed_timestamp_is_fresh_up_to_its_bound_inclusive(age: int, fresh: bool) -> None:
    auth = hmac_auth(timestamp_header="X-T", signed_payload="{timestamp}.{body}")
    headers = signed_at(str(int(NOW) - age))
    if fresh:
        check_hmac(auth, KEY, headers, BODY, NOW)
    else:
        assert refusal(lambda: check_hmac(auth, KEY, headers, BODY, NOW)).reason == "stale_timestamp"


def test_a_generic_timestamp_of_16_digits_is_read_and_of_17_is_refused_unread() -> None:
    auth = hmac_auth(timestamp_header="X-T", signed_payload="{timestamp}.{body}")
    for digits, reason in ((16, "stale_timestamp"), (17, "bad_timestamp")):
        headers = signed_at("9" * digits)
        assert refusal(lambda h=headers: check_hmac(auth, KEY, h, BODY, NOW)).reason == reason


def test_an_hmac_header_that_is_not_utf8_is_a_bad_signature_not_a_crash() -> None:
    refused = refusal(lambda: check_hmac(hmac_auth(), KEY, {"X-Changegate-Signature": "\udcff"}, BODY, NOW))
    assert refused.reason == "bad_signature"


# --- generic sources: bearer tokens ------------------------------------------------------------------


def test_a_token_under_another_scheme_is_refused_even_when_it_is_the_token() -> None:
    auth = BearerAuth(type="bearer", token_env="T")
    refused = refusal(lambda: check_bearer(auth, KEY, {"Authorization": f"Basic {KEY.decode()}"}))
    assert (refused.reason, refused.detail) == ("bad_token", "Authorization is not a Bearer token")
    check_bearer(auth, KEY, {"Authorization": f"bearer {KEY.decode()}"})


def test_a_token_in_a_header_of_its_own_is_taken_whole() -> None:
    auth = BearerAuth(type="bearer", token_env="T", header="X-Clay-Token")
    check_bearer(auth, KEY, {"X-Clay-Token": KEY.decode()})
    assert refusal(lambda: check_bearer(auth, KEY, {"X-Clay-Token": f"Bearer {KEY.decode()}"})).reason == (
        "bad_token"
    )


def test_a_token_that_is_not_utf8_is_a_bad_token_not_a_crash() -> None:
    auth = BearerAuth(type="bearer", token_env="T")
    refused = refusal(lambda: check_bearer(auth, KEY, {"Authorization": "Bearer \udcff"}))
    assert (refused.reason, refused.detail) == ("bad_token", "the token is not this source's")


# --- what a source says and signs ---------------------------------------------------------------------


def test_a_401_challenge_names_the_scheme_the_source_uses() -> None:
    bearer = Source("clay", BearerAuth(type="bearer", token_env="T"), KEY, MAPPING)
    signed = Source("scoring", hmac_auth(header="X-Signature"), KEY, MAPPING)
    assert bearer.challenge() == 'Bearer realm="changegate-ingest"'
    assert signed.challenge() == 'Signature realm="changegate-ingest", header="X-Signature"'


@pytest.mark.parametrize(("unit", "stamp"), [("seconds", str(int(NOW))), ("milliseconds", str(NOW_MS))])
def test_sign_stamps_the_time_in_the_sources_unit(unit: str, stamp: str) -> None:
    auth = hmac_auth(timestamp_header="X-T", signed_payload="{timestamp}.{body}", timestamp_unit=unit)
    headers = Source("x", auth, KEY, MAPPING).sign(BODY, NOW)
    assert headers == {"X-T": stamp, "X-Changegate-Signature": digest(f"{stamp}.".encode() + BODY).hex()}


# --- a source's scheme as declared ---------------------------------------------------------------------


def test_the_hubspot_headers_are_the_ones_hubspot_sends() -> None:
    assert HUBSPOT_SIGNATURE_HEADER == "X-HubSpot-Signature-v3"
    assert HUBSPOT_TIMESTAMP_HEADER == "X-HubSpot-Request-Timestamp"


def test_a_declared_scheme_cannot_be_changed_once_loaded() -> None:
    auth = hmac_auth()
    assert auth.timestamp_unit == "seconds"
    with pytest.raises(ValidationError):
        auth.prefix = "anything="  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "accepted"),
    [
        ({"prefix": "p" * 50}, True),
        ({"prefix": "p" * 51}, False),
        ({"signed_payload": "{body}" + "x" * 194}, True),
        ({"signed_payload": "{body}" + "x" * 195}, False),
        ({"max_age_seconds": 86_400}, True),
        ({"max_age_seconds": 86_400.5}, False),
        ({"max_age_seconds": 0.5}, True),
        ({"max_age_seconds": 0}, False),
    ],
)
def test_a_scheme_is_bounded_on_both_sides(options: dict[str, Any], accepted: bool) -> None:
    if accepted:
        hmac_auth(**options)
    else:
        with pytest.raises(ValidationError):
            hmac_auth(**options)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"signed_payload": "{body}.{nonce}"}, "signed_payload: only {body} and {timestamp} can be used"),
        ({"signed_payload": "{timestamp}"}, "signed_payload must hold {body} exactly once"),
        ({"signed_payload": "{body}{body}"}, "signed_payload must hold {body} exactly once"),
        ({"timestamp_header": "X-T"}, "signed_payload must hold {timestamp} when timestamp_header is set"),
        (
            {"signed_payload": "{timestamp}.{body}"},
            "signed_payload uses {timestamp} but no timestamp_header is set",
        ),
    ],
)
def test_a_signed_payload_that_cannot_work_is_refused_saying_why(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as refused:
        hmac_auth(**options)
    assert f"Value error, {says}" in str(refused.value)
