"""HubSpot webhooks: signature v3 (computed here with hmac, independently of the code under test)
and the mapping of HubSpot's documented event shapes to CrmEvents."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from changegate.core.contracts import CrmEventKind, ObjectType
from changegate.ingest import hubspot, signatures
from changegate.ingest.refusals import PayloadError, SignatureError

SECRET = "f3c2a1b0-9e8d-4c7b-a6f5-e4d3c2b1a090"
URI = "https://hooks.example.com/v1/webhooks/hubspot"
NOW_MS = 1_764_000_000_000


def v3(method: str, uri: str, body: bytes, timestamp: str, secret: str = SECRET) -> str:
    message = f"{method}{uri}".encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def verify(body: bytes, signature: str | None, timestamp: str | None, uri: str = URI) -> None:
    signatures.verify_hubspot_v3(SECRET, "POST", uri, body, signature, timestamp, NOW_MS, 300)


# HubSpot's documented example batch (Webhooks API): a property change and a creation.
DOCUMENTED_BATCH: list[dict[str, Any]] = [
    {
        "objectId": 1246965,
        "propertyName": "lifecyclestage",
        "propertyValue": "subscriber",
        "changeSource": "ACADEMY",
        "eventId": 3816279340,
        "subscriptionId": 25,
        "portalId": 33,
        "appId": 1160452,
        "occurredAt": 1462216307945,
        "subscriptionType": "contact.propertyChange",
        "attemptNumber": 0,
    },
    {
        "objectId": 1246978,
        "changeSource": "IMPORT",
        "eventId": 3816279480,
        "subscriptionId": 22,
        "portalId": 33,
        "appId": 1160452,
        "occurredAt": 1462216307945,
        "subscriptionType": "contact.creation",
        "attemptNumber": 0,
    },
]


def event(subscription_type: str, **fields: Any) -> dict[str, Any]:
    return {
        "eventId": 100,
        "portalId": 62515,
        "occurredAt": NOW_MS,
        "subscriptionType": subscription_type,
        "attemptNumber": 0,
        **fields,
    }


def mapped(*events: dict[str, Any], echo_ids: frozenset[str] = frozenset()) -> hubspot.Mapped:
    return hubspot.to_crm_events(hubspot.parse_batch(json.loads(json.dumps(list(events)))), echo_ids)


# --- signature v3 ---------------------------------------------------------------------------------


def test_a_genuine_fresh_request_passes() -> None:
    body = json.dumps(DOCUMENTED_BATCH).encode()
    stamp = str(NOW_MS - 60_000)
    verify(body, v3("POST", URI, body, stamp), stamp)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda s, t, b: (None, t, b), "missing_signature"),
        (lambda s, t, b: (s, None, b), "missing_timestamp"),
        (lambda s, t, b: (s, "yesterday", b), "bad_timestamp"),
        (lambda s, t, b: (s, t, b + b" "), "bad_signature"),  # the body changed after signing
        (lambda s, t, b: (s, str(int(t) + 1), b), "bad_signature"),  # so did the timestamp
        (lambda s, t, b: (v3("POST", URI, b, t, secret="another-apps-secret"), t, b), "bad_signature"),
        (lambda s, t, b: (v3("GET", URI, b, t), t, b), "bad_signature"),
        (lambda s, t, b: (s.lower(), t, b), "bad_signature"),
    ],
)
def test_a_request_that_is_not_provably_hubspots_is_refused(mutate: Any, reason: str) -> None:
    body = b'[{"eventId": 1}]'
    stamp = str(NOW_MS)
    signature, timestamp, sent = mutate(v3("POST", URI, body, stamp), stamp, body)
    with pytest.raises(SignatureError) as refused:
        verify(sent, signature, timestamp)
    assert (refused.value.status, refused.value.reason) == (401, reason)


@pytest.mark.parametrize("offset_ms", [-300_001, 300_001, -86_400_000])
def test_a_genuine_but_stale_or_future_request_is_refused_saying_so(offset_ms: int) -> None:
    body = b"[]"
    stamp = str(NOW_MS + offset_ms)
    with pytest.raises(SignatureError) as refused:
        verify(body, v3("POST", URI, body, stamp), stamp)
    assert refused.value.reason == "stale_timestamp"
    assert "refused" in refused.value.detail
    assert "old" in refused.value.detail or "future" in refused.value.detail


def test_the_uri_is_signed_with_hubspots_decoded_characters() -> None:
    # HubSpot signs %3A, %2F, %40 … decoded (its request-validation page lists them); others stay.
    sent = "https://hooks.example.com/v1/webhooks/hubspot?tag=a%3Ab%40c%2Fd&q=%20x"
    signed = "https://hooks.example.com/v1/webhooks/hubspot?tag=a:b@c/d&q=%20x"
    body, stamp = b"[]", str(NOW_MS)
    verify(body, v3("POST", signed, body, stamp), stamp, uri=sent)


# --- mapping --------------------------------------------------------------------------------------


def test_the_documented_batch_becomes_two_crm_events_keyed_by_record() -> None:
    result = hubspot.to_crm_events(hubspot.parse_batch(DOCUMENTED_BATCH), frozenset())
    (changed, changed_key), (created, created_key) = result.events
    assert (changed.kind, changed.record_id, changed.properties) == (
        CrmEventKind.PROPERTY_CHANGED,
        "1246965",
        {"lifecyclestage": "subscriber"},
    )
    assert (created.kind, created.record_id, created.properties) == (
        CrmEventKind.RECORD_CREATED,
        "1246978",
        {},
    )
    assert {changed.object_type, created.object_type} == {ObjectType.CONTACT}
    assert changed.source_event_id == "33:3816279340"
    assert changed_key == "hubspot|33:3816279340"
    assert created_key == "hubspot|33:3816279480"
    assert changed.occurred_at is not None
    assert changed.occurred_at.year == 2016
    assert changed.requested_by == "ingest:hubspot"
    assert not changed.echo


def test_the_same_hubspot_event_always_gives_the_same_key_whatever_the_attempt() -> None:
    first = mapped(event("company.propertyChange", objectId=7, propertyName="name", propertyValue="Acme"))
    retry = mapped(
        event(
            "company.propertyChange", objectId=7, propertyName="name", propertyValue="Acme", attemptNumber=3
        )
    )
    assert first.events[0][1] == retry.events[0][1]
    assert first.events[0][0].object_type is ObjectType.COMPANY


def test_a_merge_is_keyed_by_the_new_record_and_names_every_record_it_absorbed() -> None:
    merge = event(
        "contact.merge",
        objectId=9999999,
        changeFlag="MERGED",
        primaryObjectId=1234567,
        mergedObjectIds=[7654321],
        newObjectId=9999999,
        numberOfPropertiesMoved=24,
    )
    [(crm_event, _)] = mapped(merge).events
    assert crm_event.kind is CrmEventKind.RECORD_MERGED
    assert crm_event.record_id == "9999999"
    assert crm_event.merged_record_ids == ["7654321", "1234567"]


def test_a_merge_into_the_primary_keeps_the_primary() -> None:
    [(crm_event, _)] = mapped(event("contact.merge", primaryObjectId=1, mergedObjectIds=[2, 3])).events
    assert (crm_event.record_id, crm_event.merged_record_ids) == ("1", ["2", "3"])


@pytest.mark.parametrize(
    ("subscription_type", "extra", "kind"),
    [
        ("contact.deletion", {}, CrmEventKind.RECORD_DELETED),
        ("contact.privacyDeletion", {}, CrmEventKind.RECORD_DELETED),
        ("company.restore", {}, CrmEventKind.RECORD_CREATED),
        ("object.creation", {"objectTypeId": "0-2"}, CrmEventKind.RECORD_CREATED),
        (
            "object.propertyChange",
            {"objectTypeId": "0-1", "propertyName": "email"},
            CrmEventKind.PROPERTY_CHANGED,
        ),
    ],
)
def test_each_record_event_type_has_its_kind(
    subscription_type: str, extra: dict[str, Any], kind: CrmEventKind
) -> None:
    [(crm_event, _)] = mapped(event(subscription_type, objectId=5, **extra)).events
    assert (crm_event.kind, crm_event.record_id) == (kind, "5")


def test_a_primary_company_association_is_the_contacts_associatedcompanyid() -> None:
    association = {
        "associationType": "CONTACT_TO_COMPANY",
        "fromObjectId": 123,
        "toObjectId": 456,
        "isPrimaryAssociation": True,
    }
    added = mapped(event("contact.associationChange", associationRemoved=False, **association))
    removed = mapped(event("contact.associationChange", associationRemoved=True, **association))
    assert [(e.record_id, e.properties) for e, _ in added.events] == [("123", {"associatedcompanyid": "456"})]
    assert [(e.record_id, e.properties) for e, _ in removed.events] == [
        ("123", {"associatedcompanyid": None})
    ]


def test_events_changegate_has_no_use_for_are_acknowledged_not_produced() -> None:
    secondary = event(
        "contact.associationChange",
        associationType="CONTACT_TO_COMPANY",
        fromObjectId=1,
        toObjectId=2,
        isPrimaryAssociation=False,
    )
    result = mapped(
        event("deal.creation", objectId=1),
        event("object.creation", objectId=1, objectTypeId="0-3"),
        event("conversation.newMessage", objectId=1),
        secondary,
        event(
            "company.associationChange", associationType="COMPANY_TO_CONTACT", fromObjectId=2, toObjectId=1
        ),
    )
    assert result.events == []
    assert len(result.ignored) == 5


def test_our_own_apps_changes_come_back_marked_echo() -> None:
    ours = event("contact.propertyChange", objectId=1, propertyName="jobtitle", propertyValue="CTO")
    result = mapped(
        {**ours, "changeSource": "INTEGRATION", "sourceId": "1160452"},
        {**ours, "eventId": 101, "changeSource": "CRM_UI", "sourceId": "userId:7"},
        echo_ids=frozenset({"1160452"}),
    )
    assert [e.echo for e, _ in result.events] == [True, False]


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        ({"not": "a list"}, ["body"]),
        ([], ["body"]),
        ([{"eventId": 1}], ["body", 0, "portalId"]),
        (
            [event("contact.creation", objectId=1), {**event("contact.creation"), "eventId": "x"}],
            ["body", 1, "eventId"],
        ),
        ([event("contact.creation")], ["body", 0, "objectId"]),
        ([event("contact.propertyChange", objectId=1)], ["body", 0, "propertyName"]),
        ([event("contact.merge", primaryObjectId=1)], ["body", 0, "mergedObjectIds"]),
        ([event("contact.creation", objectId=-1)], ["body", 0, "objectId"]),
        (
            [event("contact.propertyChange", objectId=1, propertyName="x", propertyValue={"a": 1})],
            ["body", 0],
        ),
        (
            [event("contact.propertyChange", objectId=1, propertyName="x", propertyValue="v" * 70_000)],
            ["body", 0],
        ),
    ],
)
def test_a_batch_it_cannot_read_is_refused_naming_the_field(payload: Any, loc: list[Any]) -> None:
    with pytest.raises(PayloadError) as refused:
        hubspot.to_crm_events(hubspot.parse_batch(payload), frozenset())
    assert refused.value.status == 422
    assert refused.value.loc[: len(loc)] == loc, refused.value.loc
    assert ".".join(str(p) for p in loc) in refused.value.detail
