"""Duplicate clusters through the detector's handler on PostgreSQL (no broker): one merge proposal
names the survivor and every loser, the cluster keeps its id as records join, and the in-process
index is rebuilt from PostgreSQL."""

from __future__ import annotations

from typing import Any

import asyncpg
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType, Proposal
from changegate.core.contracts.envelope import make_envelope
from changegate.core.db import migrate, migrate_core
from changegate.core.serde import decode
from changegate.core.settings import CommonSettings
from changegate.detector.handler import Detector
from changegate.detector.settings import DetectorSettings
from helpers import signing_key

ROBERT = {
    "firstname": "Robert",
    "lastname": "Zedman",
    "email": "robert.zedman@acme.example",
    "phone": "+1 415 555 0134",
    "company": "Acme Inc.",
    "address": "1 Main Street",
    "zip": "94107",
    "city": "San Francisco",
    "jobtitle": "CTO",
    "createdate": "2020-01-01T00:00:00Z",
}


def _event(record_id: str, **props: Any) -> CrmEvent:
    return CrmEvent(
        source_system="hubspot",
        source_event_id=f"created-{record_id}",
        object_type=ObjectType.CONTACT,
        record_id=record_id,
        kind=CrmEventKind.RECORD_CREATED,
        properties=props,
    )


async def _detector(settings: CommonSettings, pool: asyncpg.Pool) -> Detector:
    detector = Detector(pool, DetectorSettings(database_url=settings.database_url), signing_key("detector"))
    await detector.load_index()
    return detector


async def _merges(pool: asyncpg.Pool) -> list[Proposal]:
    rows = await pool.fetch("SELECT value FROM changegate_outbox ORDER BY id")
    envelopes = [decode(r["value"]) for r in rows]
    return [e.payload for e in envelopes if e.event_type == "proposal" and e.payload.kind.value == "merge"]


async def _clusters(pool: asyncpg.Pool) -> dict[str, str]:
    rows = await pool.fetch("SELECT record_id, cluster_id FROM detector_clusters ORDER BY record_id")
    return {r["record_id"]: str(r["cluster_id"]) for r in rows}


async def test_a_third_record_joins_the_cluster_and_one_proposal_names_every_loser(
    settings: CommonSettings, pool: asyncpg.Pool
) -> None:
    await migrate_core(pool)
    await migrate(pool, "detector", "changegate.detector.migrations")
    detector = await _detector(settings, pool)
    await detector.handle(make_envelope(_event("c-1", **ROBERT), service="t"))
    assert await _merges(pool) == []
    bob = {**ROBERT, "firstname": "Bob", "email": "ROBERT.ZEDMAN@acme.example", "createdate": "2021-01-01"}
    await detector.handle(make_envelope(_event("c-2", **bob), service="t"))
    (first,) = await _merges(pool)
    assert (first.record_id, first.other_record_ids) == ("c-1", ["c-2"])
    cluster = first.evidence["cluster_id"]
    assert await _clusters(pool) == {"c-1": cluster, "c-2": cluster}
    assert first.evidence["model"]["version"] == detector.finder.model.model_version
    assert first.evidence["model"]["sha256"] == detector.finder.model.sha256

    # A third record of the same person, found through its blocking keys: the cluster keeps its id
    # and one proposal names the survivor and both losers, with the evidence of each pair.
    rob = {**ROBERT, "firstname": "Rob", "phone": "(415) 555-0134", "createdate": "2022-01-01"}
    await pool.execute("DELETE FROM changegate_outbox")
    await detector.handle(make_envelope(_event("c-3", **rob), service="t"))
    (joined,) = await _merges(pool)
    assert joined.evidence["cluster_id"] == cluster
    assert (joined.record_id, joined.other_record_ids) == ("c-1", ["c-2", "c-3"])
    # every pair of the cluster scored; the event's blocking found the two of c-3
    assert sorted(tuple(sorted(p["records"])) for p in joined.evidence["pairs"]) == [
        ("c-1", "c-2"),
        ("c-1", "c-3"),
        ("c-2", "c-3"),
    ]
    assert sorted(p["found_by"] for p in joined.evidence["pairs"]) == ["blocking", "blocking", "cluster"]
    assert all(p["probability"] >= detector.finder.threshold for p in joined.evidence["pairs"])
    assert joined.proposal_id != first.proposal_id
    assert await _clusters(pool) == {"c-1": cluster, "c-2": cluster, "c-3": cluster}

    # The index is rebuilt from PostgreSQL by a new process: a fourth record still finds them.
    restarted = await _detector(settings, pool)
    assert len(restarted.indexes.of(ObjectType.CONTACT)) == 3
    await pool.execute("DELETE FROM changegate_outbox")
    await restarted.handle(
        make_envelope(_event("c-4", **{**ROBERT, "createdate": "2023-01-01"}), service="t")
    )
    (again,) = await _merges(pool)
    assert again.evidence["cluster_id"] == cluster
    assert again.other_record_ids == ["c-2", "c-3", "c-4"]

    # A record merged away in the CRM leaves the index and the cluster; the cluster keeps its id.
    merged = CrmEvent(
        source_system="hubspot",
        source_event_id="merged-c-2",
        object_type=ObjectType.CONTACT,
        record_id="c-1",
        kind=CrmEventKind.RECORD_MERGED,
        merged_record_ids=["c-2"],
    )
    await restarted.handle(make_envelope(merged, service="t"))
    assert "c-2" not in restarted.indexes.of(ObjectType.CONTACT)
    assert await _clusters(pool) == {"c-1": cluster, "c-3": cluster, "c-4": cluster}


async def test_a_record_unlike_the_others_starts_no_cluster(
    settings: CommonSettings, pool: asyncpg.Pool
) -> None:
    await migrate_core(pool)
    await migrate(pool, "detector", "changegate.detector.migrations")
    detector = await _detector(settings, pool)
    await detector.handle(make_envelope(_event("c-1", **ROBERT), service="t"))
    other = {
        "firstname": "Alice",
        "lastname": "Quorn",
        "email": "alice.quorn@globex.example",
        "zip": "10016",
        "city": "New York",
    }
    await detector.handle(make_envelope(_event("c-9", **other), service="t"))
    assert await _merges(pool) == []
    assert await _clusters(pool) == {}


# The demo's population before it was fixed: every duplicate pair had the same phone and San
# Francisco address, and namesakes recurred. Two records of Shafi Turing and three of John Turing
# at one company: chaining links joined all five, and the survivor took another person's values.
SHARED = {"phone": "+1 415 555 0134", "company": "Acme Inc.", "city": "San Francisco", "zip": "94107"}
TURINGS = [
    (
        "t-1",
        {"firstname": "Shafi", "lastname": "Turing", "email": "shafi.turing.ab12@acme.example", **SHARED},
    ),
    (
        "t-2",
        {
            **SHARED,
            "firstname": "Shafi",
            "lastname": "Turing",
            "email": "SHAFI.TURING.AB12@ACME.EXAMPLE",
            "phone": "(415) 555-0134",
            "company": "Acme",
        },
    ),
    ("t-3", {"firstname": "John", "lastname": "Turing", "email": "john.turing.cd34@acme.example", **SHARED}),
    (
        "t-4",
        {
            **SHARED,
            "firstname": "John",
            "lastname": "Turing",
            "email": "JOHN.TURING.CD34@ACME.EXAMPLE",
            "phone": "(415) 555-0134",
            "company": "Acme",
        },
    ),
    (
        "t-5",
        {
            "firstname": "John",
            "lastname": "Turing",
            "email": "john.turing.7@acme.example",
            "company": "Acme",
            "jobtitle": "CTO",
        },
    ),
]
SHAFI, JOHN = {"t-1", "t-2"}, {"t-3", "t-4", "t-5"}  # t-5: a John Turing, perhaps not the same John


async def test_shafi_and_john_turing_are_never_joined_and_each_rationale_tells_the_truth(
    settings: CommonSettings, pool: asyncpg.Pool
) -> None:
    await migrate_core(pool)
    await migrate(pool, "detector", "changegate.detector.migrations")
    detector = await _detector(settings, pool)
    for record_id, props in TURINGS:
        await detector.handle(make_envelope(_event(record_id, **props), service="t"))
    merges = await _merges(pool)
    assert merges
    # chaining joined Shafi with John (one phone, one company) in one cluster
    mixed = [
        m
        for m in merges
        if not ({m.record_id, *m.other_record_ids} <= SHAFI or {m.record_id, *m.other_record_ids} <= JOHN)
    ]
    assert mixed == []
    for merge in merges:
        members = {merge.record_id, *merge.other_record_ids}
        pairs = merge.evidence["pairs"]
        weakest = min(p["probability"] for p in pairs)
        # the claim is the weakest pair's, never the triggering record's weakest direct link
        assert merge.confidence == weakest
        assert f"match probability {weakest:.3f}" in merge.rationale
        assert len(pairs) == len(members) * (len(members) - 1) // 2  # every pair scored
        assert weakest >= detector.finder.floor
        assert merge.evidence["weakest_pair"]["probability"] == weakest
    clusters: dict[str, set[str]] = {}
    for record_id, cluster in (await _clusters(pool)).items():
        clusters.setdefault(cluster, set()).add(record_id)
    # t-5, another John Turing at Acme with a mailbox of his own, may be a namesake: left alone or
    # joined to the Johns, never to Shafi
    found = sorted(sorted(c - {"t-5"}) for c in clusters.values())
    assert found == [["t-1", "t-2"], ["t-3", "t-4"]]


async def test_a_record_that_changes_into_someone_else_leaves_its_cluster(
    settings: CommonSettings, pool: asyncpg.Pool
) -> None:
    await migrate_core(pool)
    await migrate(pool, "detector", "changegate.detector.migrations")
    detector = await _detector(settings, pool)
    await detector.handle(make_envelope(_event("c-1", **ROBERT), service="t"))
    await detector.handle(make_envelope(_event("c-2", **{**ROBERT, "createdate": "2021-01-01"}), service="t"))
    await detector.handle(make_envelope(_event("c-3", **{**ROBERT, "createdate": "2022-01-01"}), service="t"))
    assert set((await _clusters(pool)).keys()) == {"c-1", "c-2", "c-3"}
    await pool.execute("DELETE FROM changegate_outbox")
    # c-3 is reused for another person: it leaves, and the rest is proposed again without it
    changed = CrmEvent(
        source_system="hubspot",
        source_event_id="changed-c-3",
        object_type=ObjectType.CONTACT,
        record_id="c-3",
        kind=CrmEventKind.PROPERTY_CHANGED,
        properties={"firstname": "Alice", "email": "alice.quorn@globex.example", "phone": "+1 212 555 0100"},
    )
    await detector.handle(make_envelope(changed, service="t"))
    assert set((await _clusters(pool)).keys()) == {"c-1", "c-2"}
    [rest] = await _merges(pool)
    assert {rest.record_id, *rest.other_record_ids} == {"c-1", "c-2"}
