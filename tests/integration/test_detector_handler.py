"""The detector's handler against PostgreSQL (no broker): what a deactivated owner's records get."""

from __future__ import annotations

import json

import asyncpg
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.envelope import make_envelope
from changegate.core.db import migrate, migrate_core
from changegate.core.serde import decode
from changegate.core.settings import CommonSettings
from changegate.detector.config import OwnerConfig
from changegate.detector.handler import Detector
from changegate.detector.settings import DetectorSettings
from changegate.detector.supersede import close
from helpers import signing_key


def _event(kind: CrmEventKind, record_id: str, **props: str) -> CrmEvent:
    return CrmEvent(
        source_system="hubspot",
        source_event_id=f"{kind.value}-{record_id}",
        object_type=ObjectType.CONTACT,
        record_id=record_id,
        kind=kind,
        properties=props,
    )


async def test_a_deactivated_owner_s_records_are_proposed_to_their_territory_owner(
    settings: CommonSettings, pool: asyncpg.Pool
) -> None:
    await migrate_core(pool)
    await migrate(pool, "detector", "changegate.detector.migrations")
    owner = OwnerConfig.model_validate(
        {
            "territories": [{"country": "us", "state": "CA", "owner": "owner-west"}],
            "fallback_owner": "owner-pool",
        }
    )
    detector = Detector(
        pool, DetectorSettings(database_url=settings.database_url, owner=owner), signing_key("detector")
    )
    for rid, state, held_by in [("c1", "CA", "owner-17"), ("c2", "NY", "owner-17"), ("c3", "CA", "owner-9")]:
        event = _event(
            CrmEventKind.RECORD_CREATED, rid, country="United States", state=state, hubspot_owner_id=held_by
        )
        await detector.handle(make_envelope(event, service="t"))
    await pool.execute("DELETE FROM changegate_outbox")  # only what the deactivation emits, below
    await detector.handle(make_envelope(_event(CrmEventKind.OWNER_DEACTIVATED, "owner-17"), service="t"))

    rows = await pool.fetch("SELECT value FROM changegate_outbox ORDER BY id")
    emitted = [decode(r["value"]) for r in rows]
    proposals = [e.payload for e in emitted if e.event_type == "proposal"]
    # c1's territory proposal from its creation is replaced by the newer one.
    retired = [e.payload for e in emitted if e.event_type == "decision"]
    assert [(d.outcome.value, d.proposal.record_id) for d in retired] == [("superseded", "c1")]
    assert [(p.record_id, p.changes[0].proposed) for p in proposals] == [
        ("c1", "owner-west"),  # its territory
        ("c2", "owner-pool"),  # no territory for NY: the fallback
    ]
    assert {p.kind.value for p in proposals} == {"owner_reassignment"}
    assert all(json.dumps(p.evidence) for p in proposals)


async def test_an_echo_of_our_own_change_updates_state_and_the_index_and_proposes_nothing(
    settings: CommonSettings, pool: asyncpg.Pool
) -> None:
    await migrate_core(pool)
    await migrate(pool, "detector", "changegate.detector.migrations")
    owner = OwnerConfig.model_validate(
        {"territories": [{"country": "us", "state": "CA", "owner": "owner-west"}]}
    )
    detector = Detector(
        pool, DetectorSettings(database_url=settings.database_url, owner=owner), signing_key("detector")
    )
    held = {"country": "United States", "state": "CA", "hubspot_owner_id": "owner-17"}
    ada = {"firstname": "Ada", "lastname": "Lovelace", "email": "ada@acme.example", "phone": "+14155550134"}

    async def proposed_after(event: CrmEvent) -> list[str]:
        await pool.execute("DELETE FROM changegate_outbox")
        await detector.handle(make_envelope(event, service="t"))
        rows = await pool.fetch("SELECT value FROM changegate_outbox ORDER BY id")
        return [
            e.payload.kind.value
            for e in map(decode, (r["value"] for r in rows))
            if e.event_type == "proposal"
        ]

    # Control: created outside changegate and held outside its territory, a record gets a proposal.
    assert await proposed_after(_event(CrmEventKind.RECORD_CREATED, "c0", **held)) == ["owner_reassignment"]
    # The same reported back as changegate's own write, then a change of ours: learnt, nothing proposed.
    echo = {"echo": True}
    created = _event(CrmEventKind.RECORD_CREATED, "c1", **held, **ada).model_copy(update=echo)
    assert await proposed_after(created) == []
    changed = _event(CrmEventKind.PROPERTY_CHANGED, "c1", jobtitle="CTO").model_copy(update=echo)
    assert await proposed_after(changed) == []
    known = await pool.fetchval("SELECT properties FROM detector_records WHERE record_id = 'c1'")
    assert known == {**held, **ada, "jobtitle": "CTO"}
    # The blocking index learnt the echoed record: a duplicate arriving later is matched to it.
    assert await proposed_after(_event(CrmEventKind.RECORD_CREATED, "c2", **ada)) == ["merge"]


async def test_a_replayed_event_is_detected_again_on_what_the_detector_knows_now(
    settings: CommonSettings, pool: asyncpg.Pool
) -> None:
    """`changegate replay` after a detector upgrade: the copy proposes by the new rules, from the
    record as known now (the old event's values are not folded back in), and the same copy twice
    changes nothing the second time."""
    from changegate.cli.replay import copy_of
    from changegate.core.dlq import DeadLetter

    await migrate_core(pool)
    await migrate(pool, "detector", "changegate.detector.migrations")
    before = Detector(pool, DetectorSettings(database_url=settings.database_url), signing_key("detector"))
    created = _event(
        CrmEventKind.RECORD_CREATED, "r1", country="United States", state="CA", hubspot_owner_id="owner-17"
    )
    created = created.model_copy(update={"properties": {**created.properties, "jobtitle": "Engineer"}})
    await before.handle(make_envelope(created, service="t"))
    changed = _event(CrmEventKind.PROPERTY_CHANGED, "r1", jobtitle="CTO")
    await before.handle(make_envelope(changed, service="t"))
    assert await pool.fetchval("SELECT count(*) FROM changegate_outbox") == 0  # no rule applied then

    upgraded = Detector(
        pool,
        DetectorSettings(
            database_url=settings.database_url,
            owner=OwnerConfig.model_validate(
                {"territories": [{"country": "us", "state": "CA", "owner": "owner-west"}]}
            ),
        ),
        signing_key("detector"),
    )
    original = DeadLetter("changegate.crm.events", 0, 0, 0, b"r1", b"")
    copy = decode(copy_of(original, created, "upgrade-1"))
    assert copy.payload.redetect is True
    await upgraded.handle(copy)
    proposals = [decode(r["value"]).payload for r in await pool.fetch("SELECT value FROM changegate_outbox")]
    assert [(p.record_id, p.changes[0].proposed) for p in proposals] == [("r1", "owner-west")]
    assert proposals[0].source.occurred_at == copy.occurred_at  # no source time: when received
    known = await pool.fetchval("SELECT properties FROM detector_records WHERE record_id = 'r1'")
    assert known["jobtitle"] == "CTO", "the replayed creation must not bring the old title back"

    await upgraded.handle(decode(copy_of(original, created, "upgrade-1")))  # the same run again
    assert await pool.fetchval("SELECT count(*) FROM changegate_outbox") == 1


async def test_a_batch_of_enrichments_opens_and_supersedes_as_one_event_after_another_would(
    settings: CommonSettings, pool: asyncpg.Pool
) -> None:
    """A batch that only reads record state is handled in a few statements (``_handle_reading``):
    a record's later proposal in the batch still retires its earlier one, right before it goes
    out; a proposal decided before is not raised again; a redelivered batch emits nothing."""
    await migrate_core(pool)
    await migrate(pool, "detector", "changegate.detector.migrations")
    detector = Detector(pool, DetectorSettings(database_url=settings.database_url), signing_key("detector"))
    for rid in ("r1", "r2", "r3"):
        await detector.handle(
            make_envelope(_event(CrmEventKind.RECORD_CREATED, rid, firstname=rid), service="t")
        )

    def enriched(rid: str, source_id: str, title: str) -> CrmEvent:
        return CrmEvent(
            source_system="clay",
            source_event_id=source_id,
            object_type=ObjectType.CONTACT,
            record_id=rid,
            kind=CrmEventKind.ENRICHMENT_RESULT,
            properties={"jobtitle": title},
        )

    # r3's proposal from an earlier batch was decided: the same one again is not raised.
    await detector.handle(make_envelope(enriched("r3", "e0", "CEO"), service="t"))
    decided = await pool.fetchval("SELECT proposal_id FROM detector_open_proposals WHERE record_id = 'r3'")
    async with pool.acquire() as conn:
        await close(conn, [(decided, "rejected")])
    await pool.execute("DELETE FROM changegate_outbox")
    batch = [
        make_envelope(event, service="t")
        for event in (
            enriched("r1", "e1", "CTO"),
            enriched("r2", "e2", "VP Sales"),
            enriched("r1", "e3", "CFO"),
            enriched("r3", "e0", "CEO"),
            enriched("r1", "e4", "COO"),
            enriched("unknown", "e5", "CEO"),
        )
    ]
    await detector.handle_batch(batch)
    sent = [decode(r["value"]) for r in await pool.fetch("SELECT value FROM changegate_outbox ORDER BY id")]
    out = [
        (e.event_type, e.payload.proposal.record_id if e.event_type == "decision" else e.payload.record_id)
        for e in sent
        if e.event_type in ("proposal", "decision")
    ]
    assert out == [
        ("proposal", "r1"),
        ("proposal", "r2"),
        ("decision", "r1"),  # CTO retired by CFO
        ("proposal", "r1"),
        ("decision", "r1"),  # CFO retired by COO
        ("proposal", "r1"),
        ("proposal", "unknown"),  # a record not known: every value fills an empty field
    ]
    proposals = [e.payload for e in sent if e.event_type == "proposal"]
    retired = [e.payload for e in sent if e.event_type == "decision"]
    assert [d.proposal.proposal_id for d in retired] == [proposals[0].proposal_id, proposals[2].proposal_id]
    assert {d.outcome.value for d in retired} == {"superseded"}
    open_now = await pool.fetch("SELECT record_id, proposal_id FROM detector_open_proposals")
    assert {r["record_id"]: r["proposal_id"] for r in open_now} == {
        "r1": proposals[3].proposal_id,
        "r2": proposals[1].proposal_id,
        "unknown": proposals[4].proposal_id,
    }
    closed = {r[0] for r in await pool.fetch("SELECT proposal_id FROM detector_closed_proposals")}
    assert closed == {decided, proposals[0].proposal_id, proposals[2].proposal_id}

    await pool.execute("DELETE FROM changegate_outbox")
    await detector.handle_batch(batch)  # redelivered
    assert await pool.fetchval("SELECT count(*) FROM changegate_outbox") == 0
