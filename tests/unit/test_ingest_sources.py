"""Generic webhook sources: the shipped sources file and mappings on the documented payloads of
Clay, ZeroBounce, NeverBounce, Kickbox, a lead-score tool and Typeform; per-source HMAC and bearer
authentication (signatures computed here with hmac); a sources file that cannot work is refused at
load, naming the file and the source."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from changegate.core.contracts import CrmEventKind
from changegate.ingest.mapping import Mapping, MappingSpec
from changegate.ingest.refusals import PayloadError, SignatureError
from changegate.ingest.sources import Source, SourcesFileError, load_sources, shipped_secret_variables
from hypothesis import given, settings
from hypothesis import strategies as st

SECRETS = {variable: f"secret-of-{variable.lower()}" for variable in shipped_secret_variables()}
NOW = 1_764_000_000.0


@pytest.fixture(scope="module")
def sources() -> dict[str, Source]:
    return load_sources(None, environ=SECRETS)


def one(source: Source, payload: Any) -> Any:
    [(event, _)] = source.to_crm_events(payload).events
    return event


# --- the shipped mappings on documented payloads ----------------------------------------------------

CLAY_ROW = {
    "record_id": "1246965",
    "object_type": "contact",
    "enrichment": {"jobtitle": "Head of Data", "company": "Acme"},
    "confidence": 0.93,
    "enriched_at": "2026-11-24T10:00:00Z",
}
# ZeroBounce GET /v2/validate, as its API documentation shows it.
ZEROBOUNCE_RESULT = {
    "address": "flowerjill@aol.com",
    "status": "do_not_mail",
    "sub_status": "disposable",
    "free_email": True,
    "did_you_mean": None,
    "account": "flowerjill",
    "domain": "aol.com",
    "domain_age_days": "8426",
    "smtp_provider": "yahoo",
    "mx_record": "mx-aol.mail.gm0.yahoodns.net",
    "mx_found": "true",
    "firstname": "Jill",
    "lastname": "Stein",
    "gender": "female",
    "country": "United States",
    "region": "Florida",
    "city": "West Palm Beach",
    "zipcode": "33401",
    "processed_at": "2017-04-01 02:48:02.592",
}
# NeverBounce GET /v4.2/jobs/results, as its API reference shows it (columns: id, email, name).
NEVERBOUNCE_PAGE = {
    "status": "success",
    "total_results": 2,
    "total_pages": 1,
    "query": {"job_id": 290561, "valids": 1, "invalids": 1, "page": 1, "items_per_page": 10},
    "results": [
        {
            "data": {"id": "12345", "email": "support@neverbounce.com", "name": "Fred McValid"},
            "verification": {
                "result": "valid",
                "flags": ["has_dns", "has_dns_mx", "smtp_connectable", "role_account"],
                "suggested_correction": "",
                "address_info": {"original_email": "support@neverbounce.com", "host": "neverbounce.com"},
            },
        },
        {
            "data": {"id": "12346", "email": "invalid@neverbounce.com", "name": "Bob McInvalid"},
            "verification": {"result": "catchall", "flags": ["has_dns"], "suggested_correction": ""},
        },
    ],
    "execution_time": 75,
}
# Kickbox GET /v2/verify, as its documentation shows it.
KICKBOX_RESULT = {
    "result": "undeliverable",
    "reason": "rejected_email",
    "role": False,
    "free": False,
    "disposable": False,
    "accept_all": False,
    "did_you_mean": "bill.lumbergh@gmail.com",
    "sendex": 0.23,
    "email": "bill.lumbergh@gamil.com",
    "user": "bill.lumbergh",
    "domain": "gamil.com",
    "success": True,
    "message": None,
}
SCORE = {
    "event_id": "sc_01HZX",
    "record_id": "123",
    "object_type": "contact",
    "score": 0.91,
    "model": "fit-v3",
    "scored_at": 1764000000,
}
# Typeform's form_response webhook (its "example payload" page), hidden fields carrying the record.
TYPEFORM = {
    "event_id": "LtWXD3crgy",
    "event_type": "form_response",
    "form_response": {
        "form_id": "lT4Z3j",
        "token": "a3a12ec67a1365927098a606107fac15",
        "submitted_at": "2026-11-24T10:00:00Z",
        "landed_at": "2026-11-24T09:58:12Z",
        "hidden": {"contact_id": "123", "form_type": "demo_request"},
        "definition": {"id": "lT4Z3j", "title": "Book a demo", "fields": []},
        "answers": [{"type": "email", "email": "ada@acme.example", "field": {"id": "x", "type": "email"}}],
    },
}


def test_the_shipped_sources_load_when_their_secrets_are_set_and_are_left_out_otherwise() -> None:
    loaded = load_sources(None, environ=SECRETS)
    assert sorted(loaded) == ["clay", "kickbox", "neverbounce", "scoring", "typeform", "zerobounce"]
    assert sorted(load_sources(None, environ={"CHANGEGATE_INGEST_CLAY_TOKEN": "t" * 16})) == ["clay"]


def test_a_clay_row_is_an_enrichment_result(sources: dict[str, Source]) -> None:
    event = one(sources["clay"], CLAY_ROW)
    assert (event.kind, event.record_id, event.source_system) == (
        CrmEventKind.ENRICHMENT_RESULT,
        "1246965",
        "clay",
    )
    assert event.properties == {"jobtitle": "Head of Data", "company": "Acme"}
    assert event.confidence == 0.93
    assert event.requested_by == "ingest:clay"
    assert event.occurred_at is not None
    assert event.occurred_at.isoformat() == "2026-11-24T10:00:00+00:00"


def test_the_same_clay_row_twice_is_one_event_and_a_new_value_another() -> None:
    clay = load_sources(None, environ=SECRETS)["clay"]
    [(_, first)] = clay.to_crm_events(CLAY_ROW).events
    [(_, again)] = clay.to_crm_events(json.loads(json.dumps(CLAY_ROW))).events
    [(_, other)] = clay.to_crm_events({**CLAY_ROW, "enrichment": {"jobtitle": "CTO"}}).events
    assert first == again != other


def test_an_enrichment_integer_too_large_to_sign_is_refused_saying_why(sources: dict[str, Source]) -> None:
    with pytest.raises(PayloadError) as refused:
        sources["clay"].to_crm_events({**CLAY_ROW, "enrichment": {"annualrevenue": 2**63}})
    assert "the range RFC 8785 signs" in str(refused.value), refused.value
    event = one(sources["clay"], {**CLAY_ROW, "enrichment": {"annualrevenue": str(2**63)}})
    assert event.properties == {"annualrevenue": str(2**63)}


def test_a_zerobounce_result_keeps_status_and_sub_status(sources: dict[str, Source]) -> None:
    event = one(sources["zerobounce"], {"record_id": "77", "result": ZEROBOUNCE_RESULT})
    assert (event.kind, event.source_system, event.object_type.value) == (
        CrmEventKind.VERIFICATION_RESULT,
        "zerobounce",
        "contact",
    )
    assert event.properties == {
        "email": "flowerjill@aol.com",
        "status": "do_not_mail",
        "sub_status": "disposable",
        "free": True,
        "did_you_mean": None,
    }
    assert event.occurred_at is not None
    assert event.occurred_at.isoformat() == "2017-04-01T02:48:02.592000+00:00"


def test_a_neverbounce_results_page_is_one_event_per_address(sources: dict[str, Source]) -> None:
    result = sources["neverbounce"].to_crm_events(NEVERBOUNCE_PAGE)
    assert [(e.record_id, e.properties["result"], e.properties["email"]) for e, _ in result.events] == [
        ("12345", "valid", "support@neverbounce.com"),
        ("12346", "catchall", "invalid@neverbounce.com"),
    ]
    assert result.events[0][0].properties["flags"] == "has_dns,has_dns_mx,smtp_connectable,role_account"
    assert len({key for _, key in result.events}) == 2


def test_a_kickbox_result_keeps_result_and_flags(sources: dict[str, Source]) -> None:
    event = one(sources["kickbox"], {"record_id": "88", "result": KICKBOX_RESULT})
    assert event.source_system == "kickbox"
    assert {k: event.properties[k] for k in ("email", "result", "reason", "disposable", "accept_all")} == {
        "email": "bill.lumbergh@gamil.com",
        "result": "undeliverable",
        "reason": "rejected_email",
        "disposable": False,
        "accept_all": False,
    }


def test_a_lead_score_is_a_score_event(sources: dict[str, Source]) -> None:
    event = one(sources["scoring"], SCORE)
    assert (event.kind, event.properties, event.source_event_id) == (
        CrmEventKind.SCORE,
        {"score": 0.91, "model": "fit-v3"},
        "sc_01HZX",
    )
    assert event.occurred_at is not None
    assert event.occurred_at.year == 2025


def test_a_typeform_submission_is_a_defined_lifecycle_event(sources: dict[str, Source]) -> None:
    event = one(sources["typeform"], TYPEFORM)
    assert (event.kind, event.record_id, event.source_event_id) == (
        CrmEventKind.LIFECYCLE_EVENT,
        "123",
        "LtWXD3crgy",
    )
    assert event.properties == {
        "event": "form_submission",
        "form_type": "demo_request",
        "form_id": "lT4Z3j",
        "form_title": "Book a demo",
    }
    partial = sources["typeform"].to_crm_events({**TYPEFORM, "event_type": "form_response_partial"})
    assert (partial.events, partial.ignored) == ([], 1)


@pytest.mark.parametrize(
    ("source", "payload", "loc"),
    [
        ("clay", {**CLAY_ROW, "record_id": None}, ["body", "record_id"]),
        ("clay", {**CLAY_ROW, "object_type": "deal"}, ["body", "object_type"]),
        ("clay", {**CLAY_ROW, "confidence": "high"}, ["body", "confidence"]),
        ("clay", {**CLAY_ROW, "confidence": 1.5}, ["body", "confidence"]),
        ("clay", {**CLAY_ROW, "enrichment": ["a"]}, ["body", "properties"]),
        ("clay", {**CLAY_ROW, "enrichment": {"jobtitle": {"nested": 1}}}, ["body", "properties", "jobtitle"]),
        ("clay", {**CLAY_ROW, "enriched_at": "yesterday"}, ["body", "occurred_at"]),
        ("clay", [CLAY_ROW], ["body", "record_id"]),
        ("neverbounce", {"results": "none"}, ["body", "records"]),
        ("neverbounce", {"results": [{"data": {"email": "a@b.c"}}]}, ["body", "records", 0, "record_id"]),
        (
            "neverbounce",
            {"results": [{"data": {"id": "1"}, "verification": {"flags": "x"}}]},
            ["body", "records", 0],
        ),
        ("scoring", {**SCORE, "event_id": None}, ["body", "source_event_id"]),
        ("typeform", {**TYPEFORM, "form_response": {}}, ["body", "record_id"]),
    ],
)
def test_a_payload_the_mapping_cannot_read_is_refused_naming_the_field(
    sources: dict[str, Source], source: str, payload: Any, loc: list[Any]
) -> None:
    with pytest.raises(PayloadError) as refused:
        sources[source].to_crm_events(payload)
    assert refused.value.loc[: len(loc)] == loc, refused.value.loc


@settings(max_examples=300, deadline=None)
@given(
    payload=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
        ),
        max_leaves=20,
    ),
    name=st.sampled_from(["clay", "zerobounce", "neverbounce", "kickbox", "scoring", "typeform"]),
)
def test_any_json_becomes_events_or_a_payload_error_never_anything_else(payload: Any, name: str) -> None:
    source = load_sources(None, environ=SECRETS)[name]
    with contextlib.suppress(PayloadError):
        source.to_crm_events(payload)


# --- authentication -------------------------------------------------------------------------------


def hex_hmac(secret: str, message: bytes, algorithm: str = "sha256") -> str:
    return hmac.new(secret.encode(), message, getattr(hashlib, algorithm)).hexdigest()


def b64_hmac(secret: str, message: bytes, algorithm: str = "sha256") -> str:
    return base64.b64encode(hmac.new(secret.encode(), message, getattr(hashlib, algorithm)).digest()).decode()


BODY = json.dumps(SCORE).encode()
ZB = SECRETS["CHANGEGATE_INGEST_ZEROBOUNCE_SECRET"]


def test_each_shipped_scheme_accepts_its_genuine_signature(sources: dict[str, Source]) -> None:
    stamp = str(int(NOW))
    signed = f"{stamp}.".encode() + BODY
    sources["zerobounce"].authenticate(
        {"X-Changegate-Signature": f"sha256={hex_hmac(ZB, signed)}", "X-Changegate-Timestamp": stamp},
        BODY,
        NOW,
    )
    scoring = SECRETS["CHANGEGATE_INGEST_SCORING_SECRET"]
    sources["scoring"].authenticate({"X-Signature": b64_hmac(scoring, BODY, "sha512")}, BODY, NOW)
    typeform = SECRETS["CHANGEGATE_INGEST_TYPEFORM_SECRET"]
    sources["typeform"].authenticate({"Typeform-Signature": f"sha256={b64_hmac(typeform, BODY)}"}, BODY, NOW)
    clay = SECRETS["CHANGEGATE_INGEST_CLAY_TOKEN"]
    sources["clay"].authenticate({"Authorization": f"Bearer {clay}"}, BODY, NOW)


@pytest.mark.parametrize(
    ("source", "headers", "reason"),
    [
        ("zerobounce", {}, "missing_signature"),
        ("zerobounce", {"X-Changegate-Signature": "sha256=00"}, "missing_timestamp"),
        (
            "zerobounce",
            {"X-Changegate-Signature": "sha256=00", "X-Changegate-Timestamp": "soon"},
            "bad_timestamp",
        ),
        (
            "zerobounce",
            {
                "X-Changegate-Signature": hex_hmac(ZB, f"{int(NOW)}.".encode() + BODY),
                "X-Changegate-Timestamp": str(int(NOW)),
            },
            "bad_signature",  # no sha256= prefix
        ),
        (
            "zerobounce",  # signed without the timestamp: a replay could carry any timestamp
            {
                "X-Changegate-Signature": f"sha256={hex_hmac(ZB, BODY)}",
                "X-Changegate-Timestamp": str(int(NOW)),
            },
            "bad_signature",
        ),
        (
            "zerobounce",
            {
                "X-Changegate-Signature": f"sha256={hex_hmac(ZB, f'{int(NOW) - 301}.'.encode() + BODY)}",
                "X-Changegate-Timestamp": str(int(NOW) - 301),
            },
            "stale_timestamp",
        ),
        ("scoring", {"X-Signature": b64_hmac("not-the-secret-at-all", BODY, "sha512")}, "bad_signature"),
        ("clay", {}, "missing_token"),
        ("clay", {"Authorization": "Basic abc"}, "bad_token"),
        ("clay", {"Authorization": "Bearer not-the-token"}, "bad_token"),
        ("clay", {"Authorization": f"Bearer {SECRETS['CHANGEGATE_INGEST_SCORING_SECRET']}"}, "bad_token"),
    ],
)
def test_a_request_not_proven_to_be_the_sources_is_refused(
    sources: dict[str, Source], source: str, headers: dict[str, str], reason: str
) -> None:
    with pytest.raises(SignatureError) as refused:
        sources[source].authenticate(headers, BODY, NOW)
    assert (refused.value.status, refused.value.reason) == (401, reason)


def test_sign_makes_what_authenticate_accepts(sources: dict[str, Source]) -> None:
    for source in sources.values():
        source.authenticate(source.sign(BODY, NOW), BODY, NOW)


# --- a sources file that cannot work -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("sources: {x: {auth: {type: bearer, token_env: T}, mapping: nope}}", "no shipped mapping 'nope'"),
        (
            "sources: {x: {auth: {type: bearer, token_env: UNSET}, mapping: clay_enrichment}}",
            "UNSET is not set",
        ),
        (
            "sources: {x: {auth: {type: bearer, token_env: SHORT}, mapping: clay_enrichment}}",
            "shorter than 16",
        ),
        (
            "sources: {hubspot: {auth: {type: bearer, token_env: T}, mapping: clay_enrichment}}",
            "taken by HubSpot",
        ),
        (
            "sources: {x: {auth: {type: bearer, token_env: T, colour: red}, mapping: clay_enrichment}}",
            "colour",
        ),
        (
            "sources: {x: {auth: {type: hmac, secret_env: T, timestamp_header: X-T},"
            " mapping: clay_enrichment}}",
            "must hold {timestamp}",
        ),
        (
            "sources: {x: {auth: {type: bearer, token_env: T},"
            " mapping: {record_id: 'a[', object_type: \"'contact'\", kind: \"'score'\"}}}",
            "not a JMESPath expression",
        ),
        ("sources: [1, 2]", "sources"),
        ("sources: {'Bad Name': {auth: {type: bearer, token_env: T}, mapping: clay_enrichment}}", "Bad Name"),
    ],
)
def test_a_sources_file_that_cannot_work_is_refused_at_load_naming_the_source(
    tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    with pytest.raises(SourcesFileError) as refused:
        load_sources(path, environ={"T": "t" * 16, "SHORT": "short"})
    assert str(path) in str(refused.value), str(refused.value)
    assert says in str(refused.value), str(refused.value)


def test_a_new_source_is_configuration_with_an_inline_mapping_and_a_secret_file(tmp_path: Path) -> None:
    (tmp_path / "sources.yaml").write_text(
        "sources:\n"
        "  intent:\n"
        "    auth: {type: hmac, secret_env: CHANGEGATE_INGEST_INTENT_SECRET, header: X-Hub-Signature-256,"
        " prefix: 'sha256='}\n"
        "    mapping:\n"
        "      records: signals\n"
        "      record_id: company.crm_id\n"
        "      object_type: \"'company'\"\n"
        "      kind: \"'score'\"\n"
        "      properties: '{score: strength, model: `\"intent-v1\"`}'\n"
        "      source_event_id: id\n"
    )
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "changegate_ingest_intent_secret").write_text("intent-secret-0123456789\n")
    [source] = load_sources(tmp_path / "sources.yaml", environ={}, secrets_dir=secrets).values()
    body = b'{"signals": [{"id": "s1", "strength": 0.7, "company": {"crm_id": 42}}]}'
    source.authenticate(
        {"X-Hub-Signature-256": f"sha256={hex_hmac('intent-secret-0123456789', body)}"}, body, NOW
    )
    [(event, key)] = source.to_crm_events(json.loads(body)).events
    assert (event.object_type.value, event.record_id, event.properties) == (
        "company",
        "42",
        {"score": 0.7, "model": "intent-v1"},
    )
    assert key == "intent|s1"


def test_a_mapping_spec_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError, match="colour"):
        MappingSpec.model_validate({"record_id": "a", "object_type": "b", "kind": "c", "colour": "red"})
    assert Mapping.of(MappingSpec(record_id="a", object_type="b", kind="c")).compiled.keys() == {
        "record_id",
        "object_type",
        "kind",
    }
