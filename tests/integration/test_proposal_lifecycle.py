"""One owner for a proposal's lifecycle, against PostgreSQL: a decided proposal is closed and can no
longer be superseded; the executor's conflict re-proposal is tracked like any other; a redelivered
review request or a re-detection never reopens a decided proposal; the audit log never keeps a
supersession that came after the decision."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from changegate.audit.store import record_decision
from changegate.cli.main import app
from changegate.core.contracts import (
    CrmEvent,
    CrmEventKind,
    Decider,
    Decision,
    DecisionOutcome,
    Execution,
    ExecutionStatus,
    FieldChange,
    FieldWrite,
    ObjectType,
    Proposal,
    ProposalKind,
    ReviewRequest,
)
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.envelope import Envelope, make_envelope
from changegate.core.db import migrate, migrate_core
from changegate.core.kafka import make_producer
from changegate.core.serde import decode
from changegate.core.settings import CommonSettings
from changegate.core.signing import SignatureRefusedError
from changegate.core.topics import TopicNames
from changegate.detector import reliability
from changegate.detector.changelog import RecordFeed
from changegate.detector.handler import Detector
from changegate.detector.learning import Learner
from changegate.detector.open_proposals import ProposalLifecycle
from changegate.detector.reliability import CellCounts, ReliabilityTable
from changegate.detector.settings import DetectorSettings
from changegate.detector.supersede import supersede
from helpers import signing_key, verifier
from typer.testing import CliRunner

POLICY = Decider(kind="policy", identity="policy:t", policy_version="t", policy_hash="a" * 64, rule_id="r")


@pytest.fixture
async def parts(settings: CommonSettings, pool: asyncpg.Pool) -> tuple[Detector, ProposalLifecycle]:
    await migrate_core(pool)
    await migrate(pool, "detector", "changegate.detector.migrations")
    await migrate(pool, "audit", "changegate.audit.migrations")
    signer = signing_key("detector")
    detector = Detector(pool, DetectorSettings(database_url=settings.database_url), signer)
    lifecycle = ProposalLifecycle(
        pool, TopicNames(settings.topic_prefix), signer, verifier(), detector.indexes
    )
    return detector, lifecycle


def _enrichment(record_id: str, title: str) -> Envelope[Any]:
    event = CrmEvent(
        source_system="clay",
        source_event_id=f"clay-{uuid.uuid4().hex[:8]}",
        object_type=ObjectType.CONTACT,
        record_id=record_id,
        kind=CrmEventKind.ENRICHMENT_RESULT,
        properties={"jobtitle": title},
        confidence=0.95,
    )
    return make_envelope(event, service="t")


async def _emitted(pool: asyncpg.Pool, event_type: str) -> list[Any]:
    rows = await pool.fetch("SELECT value FROM changegate_outbox ORDER BY id")
    return [e.payload for r in rows if (e := decode(r["value"])).event_type == event_type]


def _decision(proposal: Proposal, outcome: DecisionOutcome = DecisionOutcome.APPROVED) -> Decision:
    decision = Decision(
        decision_id=uuid.uuid4(),
        proposal=proposal,
        outcome=outcome,
        decided_by=Decider(kind="human", identity="alice@example.com"),
        decided_at=utcnow(),
        explanation="approved by alice",
        final_changes=list(proposal.changes) if outcome.executes else [],
    )
    return signing_key("review-api").sign(decision)


async def test_a_decided_proposal_is_never_superseded(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, lifecycle = parts
    await detector.handle(_enrichment("r1", "CTO"))
    [first] = await _emitted(pool, "proposal")
    # Before the lifecycle had an owner, this approval changed nothing in the detector, and the
    # next proposal for jobtitle "superseded" an approved proposal.
    await lifecycle.on_decision(make_envelope(_decision(first), service="review-api"))
    await detector.handle(_enrichment("r1", "CEO"))
    assert await _emitted(pool, "decision") == []
    assert len(await _emitted(pool, "proposal")) == 2
    closed = await pool.fetchval(
        "SELECT outcome FROM detector_closed_proposals WHERE proposal_id = $1", first.proposal_id
    )
    assert closed == "approved"


async def test_an_open_proposal_is_still_superseded_and_closed_by_it(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, _ = parts
    await detector.handle(_enrichment("r2", "CTO"))
    await detector.handle(_enrichment("r2", "CEO"))
    [retirement] = await _emitted(pool, "decision")
    first = (await _emitted(pool, "proposal"))[0]
    assert (retirement.outcome, retirement.proposal.proposal_id) == (
        DecisionOutcome.SUPERSEDED,
        first.proposal_id,
    )
    assert retirement.signature is not None  # signed by the detector
    assert verifier().decision(retirement) == "detector"


async def test_a_conflict_re_proposal_is_tracked_and_can_be_superseded(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, lifecycle = parts
    await detector.handle(_enrichment("r3", "CTO"))
    [original] = await _emitted(pool, "proposal")
    await lifecycle.on_decision(make_envelope(_decision(original), service="review-api"))
    # The executor found jobtitle changed meanwhile and re-proposed it against the new value.
    changes = [FieldChange(field="jobtitle", previous="Engineer", proposed="CTO")]
    again = original.model_copy(
        update={
            "proposal_id": Proposal.make_id("enrichment", "r3", changes, "conflict:x"),
            "changes": changes,
            "source": original.source.model_copy(update={"event_id": "conflict:x"}),
        }
    )
    request = ReviewRequest(
        proposal=signing_key("executor").sign(again),
        queue="conflicts",
        routed_by=Decider(kind="system", identity="executor"),
        explanation="sent back to review: the record changed",
    )
    await lifecycle.on_review_request(
        make_envelope(signing_key("executor").sign(request), service="executor")
    )
    await detector.handle(_enrichment("r3", "CEO"))
    [retirement] = await _emitted(pool, "decision")
    assert retirement.proposal.proposal_id == again.proposal_id


async def test_a_decided_proposal_is_not_reopened(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, lifecycle = parts
    await detector.handle(_enrichment("r4", "CTO"))
    [first] = await _emitted(pool, "proposal")
    await lifecycle.on_decision(make_envelope(_decision(first, DecisionOutcome.REJECTED), service="r"))
    request = ReviewRequest(proposal=first, routed_by=POLICY, explanation="late")
    late = signing_key("policy").sign(request)
    await lifecycle.on_review_request(make_envelope(late, service="policy"))  # redelivered late
    async with pool.acquire() as conn:
        assert await supersede(conn, first) == []  # re-detected: stays closed
        assert await conn.fetchval("SELECT count(*) FROM detector_open_proposals WHERE record_id = 'r4'") == 0


async def test_a_decided_proposal_is_not_raised_again_by_its_event_seen_again(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    """The same enrichment under a new envelope (a replay, a copy) after its proposal was decided:
    the detector emits nothing and opens nothing (checked with the open proposals it replaces, in
    one statement)."""
    detector, lifecycle = parts
    event = _enrichment("r6", "CTO")
    await detector.handle(event)
    [first] = await _emitted(pool, "proposal")
    await lifecycle.on_decision(make_envelope(_decision(first, DecisionOutcome.REJECTED), service="r"))
    await pool.execute("DELETE FROM changegate_outbox")
    await detector.handle(make_envelope(event.payload, service="t"))
    assert await _emitted(pool, "proposal") == []
    assert await pool.fetchval("SELECT count(*) FROM detector_open_proposals WHERE record_id = 'r6'") == 0


async def test_a_forged_decision_closes_nothing(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, lifecycle = parts
    await detector.handle(_enrichment("r5", "CTO"))
    [first] = await _emitted(pool, "proposal")
    unsigned = _decision(first).model_copy(update={"signature": None})
    with pytest.raises(SignatureRefusedError):
        await lifecycle.on_decision(make_envelope(unsigned, service="mallory"))
    assert await pool.fetchval("SELECT count(*) FROM detector_open_proposals WHERE record_id = 'r5'") == 1


async def test_the_audit_log_keeps_no_supersession_after_a_decision(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, _ = parts
    await detector.handle(_enrichment("r6", "CTO"))
    [first] = await _emitted(pool, "proposal")
    late = Decision(
        decision_id=uuid.uuid4(),
        proposal=first,
        outcome=DecisionOutcome.SUPERSEDED,
        decided_by=Decider(kind="system", identity="detector"),
        decided_at=utcnow(),
        explanation="superseded too late",
    )
    async with pool.acquire() as conn:
        assert await record_decision(conn, _decision(first))
        assert not await record_decision(conn, late)
        outcomes = await conn.fetch(
            "SELECT outcome FROM audit_decisions WHERE proposal_id = $1", first.proposal_id
        )
    assert [r["outcome"] for r in outcomes] == ["approved"]


async def test_an_applied_merge_retires_the_open_proposals_of_the_records_it_merged_away(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, lifecycle = parts
    await detector.handle(_enrichment("loser-1", "CTO"))
    await detector.handle(_enrichment("survivor-1", "CEO"))
    [loser_proposal, survivor_proposal] = await _emitted(pool, "proposal")
    changes = [FieldChange(field="merged_into", previous=None, proposed="survivor-1")]
    merge = signing_key("detector").sign(
        loser_proposal.model_copy(
            update={
                "proposal_id": uuid.uuid4(),
                "kind": ProposalKind.MERGE,
                "record_id": "survivor-1",
                "other_record_ids": ["loser-1"],
                "changes": changes,
            }
        )
    )
    decision = _decision(merge)
    execution = Execution(
        execution_id=Execution.make_id(decision.decision_id),
        decision=decision,
        status=ExecutionStatus.APPLIED,
        crm_target="sandbox",
        executed_at=utcnow(),
    )
    await lifecycle.on_execution(make_envelope(signing_key("executor").sign(execution), service="executor"))
    [retirement] = await _emitted(pool, "decision")
    assert retirement.proposal.proposal_id == loser_proposal.proposal_id
    assert retirement.explanation == "loser-1 merged into survivor-1"
    still_open = await pool.fetch("SELECT DISTINCT proposal_id FROM detector_open_proposals")
    assert [r["proposal_id"] for r in still_open] == [survivor_proposal.proposal_id]


ROBERT = {
    "firstname": "Robert",
    "lastname": "Zedman",
    "email": "robert.zedman@acme.example",
    "phone": "+1 415 555 0134",
    "company": "Acme Inc.",
    "address": "1 Main Street",
    "zip": "94107",
    "city": "San Francisco",
    "createdate": "2020-01-01T00:00:00Z",
}


def _created(record_id: str, **changes: Any) -> Envelope[Any]:
    event = CrmEvent(
        source_system="hubspot",
        source_event_id=f"created-{record_id}-{uuid.uuid4().hex[:6]}",
        object_type=ObjectType.CONTACT,
        record_id=record_id,
        kind=CrmEventKind.RECORD_CREATED,
        properties={**ROBERT, **changes},
    )
    return make_envelope(event, service="t")


def _changed(record_id: str, **props: Any) -> Envelope[Any]:
    event = CrmEvent(
        source_system="hubspot",
        source_event_id=f"changed-{record_id}-{uuid.uuid4().hex[:6]}",
        object_type=ObjectType.CONTACT,
        record_id=record_id,
        kind=CrmEventKind.PROPERTY_CHANGED,
        properties=props,
    )
    return make_envelope(event, service="t")


async def _merges(pool: asyncpg.Pool) -> list[Proposal]:
    return [p for p in await _emitted(pool, "proposal") if p.kind is ProposalKind.MERGE]


async def test_a_grown_cluster_retires_the_open_merge_of_the_smaller_one(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, _ = parts
    await detector.handle(_created("m-1"))
    await detector.handle(_created("m-2", firstname="Bob", createdate="2021-01-01"))
    [pair] = await _merges(pool)
    await detector.handle(_created("m-3", firstname="Rob", createdate="2022-01-01"))
    [_, grown] = await _merges(pool)
    assert sorted([grown.record_id, *grown.other_record_ids]) == ["m-1", "m-2", "m-3"]
    # Before, both stayed open: a reviewer could approve the smaller merge and then the larger one.
    [retirement] = await _emitted(pool, "decision")
    assert (retirement.outcome, retirement.proposal.proposal_id) == (
        DecisionOutcome.SUPERSEDED,
        pair.proposal_id,
    )
    assert str(grown.proposal_id) in retirement.explanation
    open_merges = await pool.fetch("SELECT proposal_id FROM detector_open_merges")
    assert [r["proposal_id"] for r in open_merges] == [grown.proposal_id]


async def test_a_rejected_pair_never_joins_one_cluster_again(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, lifecycle = parts
    await detector.handle(_created("n-1"))
    await detector.handle(_created("n-2", firstname="Bob", createdate="2021-01-01"))
    [pair] = await _merges(pool)
    await lifecycle.on_decision(
        make_envelope(_decision(pair, DecisionOutcome.REJECTED), service="review-api")
    )
    distinct = await pool.fetch("SELECT a, b FROM detector_distinct_pairs")
    assert [(r["a"], r["b"]) for r in distinct] == [("n-1", "n-2")]
    assert await pool.fetchval("SELECT count(*) FROM detector_clusters WHERE record_id LIKE 'n-%'") == 0
    # The same records detected again (an identifying property changed back and forth).
    await detector.handle(_created("n-2", firstname="Bobby", createdate="2021-01-01"))
    await detector.handle(_created("n-2", firstname="Bob", createdate="2021-01-01"))
    assert [m.proposal_id for m in await _merges(pool)] == [pair.proposal_id]
    # A new record of the same person joins one of them; the rejected pair stays apart, whatever
    # the cluster grows through.
    await detector.handle(_created("n-3", firstname="Rob", createdate="2022-01-01"))
    await detector.handle(_created("n-4", firstname="Robert", createdate="2023-01-01"))
    later = (await _merges(pool))[1:]
    assert later
    for merge in later:
        members = {merge.record_id, *merge.other_record_ids}
        assert not {"n-1", "n-2"} <= members, members
    # nothing but retirements of merges the growing cluster replaced
    assert all(d.outcome is DecisionOutcome.SUPERSEDED for d in await _emitted(pool, "decision"))


async def test_a_rejection_of_a_merge_since_superseded_still_separates_its_records(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    """A reviewer rejects the pair's merge while a third record already grew the cluster: the
    grown cluster's open merge holds the rejected pair, so it is retired and the cluster dissolved."""
    detector, lifecycle = parts
    await detector.handle(_created("q-1"))
    await detector.handle(_created("q-2", firstname="Bob", createdate="2021-01-01"))
    [pair] = await _merges(pool)
    await detector.handle(_created("q-3", firstname="Rob", createdate="2022-01-01"))
    [_, grown] = await _merges(pool)
    await lifecycle.on_decision(
        make_envelope(_decision(pair, DecisionOutcome.REJECTED), service="review-api")
    )
    retired = [d for d in await _emitted(pool, "decision") if d.proposal.proposal_id == grown.proposal_id]
    assert [d.outcome for d in retired] == [DecisionOutcome.SUPERSEDED]
    assert "rejected" in retired[0].explanation
    assert await pool.fetchval("SELECT count(*) FROM detector_open_merges") == 0
    assert await pool.fetchval("SELECT count(*) FROM detector_clusters") == 0


async def test_a_pending_change_on_a_merged_away_record_reaches_the_survivor(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, lifecycle = parts
    await detector.handle(_created("s-1", jobtitle="Engineer"))
    await detector.handle(_created("s-2", firstname="Bob", createdate="2021-01-01", jobtitle="Intern"))
    [merge] = await _merges(pool)
    assert (merge.record_id, merge.other_record_ids) == ("s-1", ["s-2"])
    await detector.handle(_enrichment("s-2", "VP Engineering"))  # pending on the record merged away
    [pending] = [p for p in await _emitted(pool, "proposal") if p.kind is ProposalKind.FIELD_UPDATE]
    assert pending.record_id == "s-2"
    decision = _decision(merge)
    await lifecycle.on_decision(make_envelope(decision, service="review-api"))
    await lifecycle.on_execution(_applied(decision, [], utcnow()))
    [retired] = [d for d in await _emitted(pool, "decision") if d.proposal.proposal_id == pending.proposal_id]
    assert retired.outcome is DecisionOutcome.SUPERSEDED
    # re-proposed for the survivor, against the survivor's own current value
    [moved] = [p for p in await _emitted(pool, "proposal") if p.evidence.get("retargeted_from")]
    assert moved.record_id == "s-1"
    assert [(c.field, c.previous, c.proposed) for c in moved.changes] == [
        ("jobtitle", "Engineer", "VP Engineering")
    ]
    assert moved.evidence["retargeted_from"]["record_id"] == "s-2"
    assert verifier().proposal(moved) == "detector"  # signed anew: policy refuses it otherwise
    assert moved.kind is pending.kind
    assert moved.confidence == pending.confidence
    assert moved.source == pending.source
    assert "s-2 was merged into s-1" in moved.rationale
    opened = await pool.fetchval(
        "SELECT proposal_id FROM detector_open_proposals WHERE record_id = 's-1' AND field = 'jobtitle'"
    )
    assert opened == moved.proposal_id
    # delivered again: nothing new
    count = len(await _emitted(pool, "proposal"))
    await lifecycle.on_execution(_applied(decision, [], utcnow()))
    assert len(await _emitted(pool, "proposal")) == count


async def test_a_pending_change_the_survivor_already_holds_is_only_retired(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, lifecycle = parts
    await detector.handle(_created("u-1", jobtitle="CTO"))
    await detector.handle(_created("u-2", firstname="Bob", createdate="2021-01-01", jobtitle="Intern"))
    [merge] = await _merges(pool)
    await detector.handle(_enrichment("u-2", "CTO"))
    decision = _decision(merge)
    await lifecycle.on_execution(_applied(decision, [], utcnow()))
    assert not [p for p in await _emitted(pool, "proposal") if p.evidence.get("retargeted_from")]
    assert len(await _emitted(pool, "decision")) == 1


async def test_an_applied_merge_takes_the_merged_away_records_out_of_matching(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, lifecycle = parts
    await detector.handle(_created("k-1"))
    await detector.handle(_created("k-2", firstname="Bob", createdate="2021-01-01"))
    [pair] = await _merges(pool)
    decision = _decision(pair)
    await lifecycle.on_decision(make_envelope(decision, service="review-api"))
    execution = Execution(
        execution_id=Execution.make_id(decision.decision_id),
        decision=decision,
        status=ExecutionStatus.APPLIED,
        crm_target="sandbox",
        executed_at=utcnow(),
    )
    await lifecycle.on_execution(make_envelope(signing_key("executor").sign(execution), service="executor"))
    assert "k-2" not in detector.indexes.of(ObjectType.CONTACT)
    gone = await pool.fetchval("SELECT deleted FROM detector_records WHERE record_id = 'k-2'")
    assert gone is True
    # A third record of the same person matches the survivor only: k-2 is gone from the CRM.
    await detector.handle(_created("k-3", firstname="Rob", createdate="2022-01-01"))
    [_, after] = await _merges(pool)
    assert sorted([after.record_id, *after.other_record_ids]) == ["k-1", "k-3"]


def _applied(decision: Decision, writes: list[FieldWrite], executed_at: datetime) -> Envelope[Any]:
    execution = Execution(
        execution_id=Execution.make_id(decision.decision_id),
        decision=decision,
        status=ExecutionStatus.APPLIED,
        writes=writes,
        crm_target="sandbox",
        executed_at=executed_at,
    )
    return make_envelope(signing_key("executor").sign(execution), service="executor")


async def test_what_changegate_wrote_becomes_the_detectors_view_without_an_echo(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, lifecycle = parts
    await detector.handle(_created("w-1", jobtitle="Engineer"))
    await detector.handle(_enrichment("w-1", "CTO"))
    [proposal] = [p for p in await _emitted(pool, "proposal") if p.kind is ProposalKind.FIELD_UPDATE]
    decision = _decision(proposal)
    write = FieldWrite(field="jobtitle", expected="Engineer", overwritten="Engineer", new="CTO")
    await lifecycle.on_execution(_applied(decision, [write], utcnow()))
    props = await pool.fetchval("SELECT properties FROM detector_records WHERE record_id = 'w-1'")
    assert props["jobtitle"] == "CTO"
    # So the next enrichment starts from the value now in the CRM (before: "Engineer", a sure
    # conflict at the executor).
    await detector.handle(_enrichment("w-1", "CEO"))
    latest = (await _emitted(pool, "proposal"))[-1]
    assert [(c.previous, c.proposed) for c in latest.changes] == [("CTO", "CEO")]


async def test_only_writes_of_what_the_index_is_made_of_go_on_the_changelog(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool, settings: CommonSettings
) -> None:
    detector, _ = parts
    producer = make_producer(settings, "t")  # never started: the feed only makes messages here
    feed = RecordFeed(settings, pool, detector.indexes, producer, asyncio.Event())
    await producer.stop()
    lifecycle = ProposalLifecycle(
        pool, TopicNames(settings.topic_prefix), signing_key("detector"), verifier(), detector.indexes, feed
    )
    await detector.handle(_created("w-9", jobtitle="Engineer"))
    await detector.handle(_enrichment("w-9", "CTO"))
    [proposal] = [p for p in await _emitted(pool, "proposal") if p.kind is ProposalKind.FIELD_UPDATE]
    decision = _decision(proposal)
    title = FieldWrite(field="jobtitle", expected="Engineer", overwritten="Engineer", new="CTO")
    await lifecycle.on_execution(_applied(decision, [title], utcnow()))
    # Another replica's index would not change: nothing to tell it.
    assert await _emitted(pool, "record_change") == []
    email = FieldWrite(field="email", expected=None, overwritten=None, new="bob@zedman.example")
    await lifecycle.on_execution(_applied(_decision(proposal), [email], utcnow()))
    [change] = await _emitted(pool, "record_change")
    assert (change.record_id, change.searched) == ("w-9", False)
    found = detector.indexes.of(ObjectType.CONTACT).features("w-9")
    assert found is not None
    assert found.email == "bob@zedman.example"


async def test_a_late_execution_never_overrides_what_a_later_event_said(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, lifecycle = parts
    await detector.handle(_created("w-2", jobtitle="Engineer"))
    await detector.handle(_enrichment("w-2", "CTO"))
    [proposal] = [p for p in await _emitted(pool, "proposal") if p.kind is ProposalKind.FIELD_UPDATE]
    write = FieldWrite(field="jobtitle", expected="Engineer", overwritten="Engineer", new="CTO")
    executed_at = utcnow() - timedelta(minutes=5)  # written before the CRM told us "Founder"
    await detector.handle(_changed("w-2", jobtitle="Founder"))
    await lifecycle.on_execution(_applied(_decision(proposal), [write], executed_at))
    props = await pool.fetchval("SELECT properties FROM detector_records WHERE record_id = 'w-2'")
    assert props["jobtitle"] == "Founder"


async def test_a_forged_execution_changes_no_state(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, lifecycle = parts
    await detector.handle(_created("w-3", jobtitle="Engineer"))
    await detector.handle(_enrichment("w-3", "CTO"))
    [proposal] = [p for p in await _emitted(pool, "proposal") if p.kind is ProposalKind.FIELD_UPDATE]
    write = FieldWrite(field="jobtitle", expected="Engineer", overwritten="Engineer", new="Hacked")
    execution = Execution(
        execution_id=uuid.uuid4(),
        decision=_decision(proposal),
        status=ExecutionStatus.APPLIED,
        writes=[write],
        crm_target="sandbox",
        executed_at=utcnow(),
    )  # not signed by the executor: anyone on the bus could have sent it
    with pytest.raises(SignatureRefusedError):
        await lifecycle.on_execution(make_envelope(execution, service="executor"))
    props = await pool.fetchval("SELECT properties FROM detector_records WHERE record_id = 'w-3'")
    assert props["jobtitle"] == "Engineer"


async def test_a_re_targeted_change_replaces_an_older_one_of_the_survivor_and_says_so(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, lifecycle = parts
    await detector.handle(_created("v-1", jobtitle="Engineer"))
    await detector.handle(_created("v-2", firstname="Bob", createdate="2021-01-01", jobtitle="Intern"))
    [merge] = await _merges(pool)
    await detector.handle(_enrichment("v-1", "CTO"))  # the survivor's, older
    await detector.handle(_enrichment("v-2", "VP Engineering"))  # the merged-away record's, newer
    older, newer = [p for p in await _emitted(pool, "proposal") if p.kind is ProposalKind.FIELD_UPDATE]
    await lifecycle.on_execution(_applied(_decision(merge), [], utcnow()))
    retired = {d.proposal.proposal_id for d in await _emitted(pool, "decision")}
    assert retired == {older.proposal_id, newer.proposal_id}
    [moved] = [p for p in await _emitted(pool, "proposal") if p.evidence.get("retargeted_from")]
    assert [(c.previous, c.proposed) for c in moved.changes] == [("Engineer", "VP Engineering")]


async def test_a_verdict_on_the_merged_away_records_own_address_is_not_moved(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, lifecycle = parts
    await detector.handle(_created("x-1"))
    other_mailbox = "bob.zedman@home.example"
    await detector.handle(
        _created(
            "x-2", firstname="Bob", createdate="2021-01-01", email=other_mailbox, phone="+1 415 555 0134"
        )
    )
    [merge] = await _merges(pool)
    verdict = CrmEvent(
        source_system="zerobounce",
        source_event_id="zb-1",
        object_type=ObjectType.CONTACT,
        record_id="x-2",
        kind=CrmEventKind.VERIFICATION_RESULT,
        properties={"email": other_mailbox, "status": "invalid"},
    )
    await detector.handle(make_envelope(verdict, service="t"))
    [pending] = [p for p in await _emitted(pool, "proposal") if p.kind is ProposalKind.EMAIL_VERIFICATION]
    await lifecycle.on_execution(_applied(_decision(merge), [], utcnow()))
    assert [d.proposal.proposal_id for d in await _emitted(pool, "decision")] == [pending.proposal_id]
    assert not [p for p in await _emitted(pool, "proposal") if p.evidence.get("retargeted_from")]


async def test_human_decisions_teach_the_reliability_table_the_next_proposals_use(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool
) -> None:
    detector, lifecycle = parts
    for n in range(5):
        await detector.handle(_enrichment(f"learn-{n}", "CTO"))
    proposals = await _emitted(pool, "proposal")
    assert [p.evidence["confidence_basis"]["table"] for p in proposals] == ["none"] * 5
    [cell] = {c["cell"] for p in proposals for c in p.evidence["confidence_basis"]["cells"]}
    # Four approved, one rejected by a human; a redelivered approval teaches nothing twice; a
    # supersession (no human's) teaches nothing at all.
    approvals = [_decision(p) for p in proposals[:4]]
    for decision in [*approvals, approvals[0], _decision(proposals[4], DecisionOutcome.REJECTED)]:
        await lifecycle.on_decision(make_envelope(decision, service="review-api"))
    learner = Learner(pool, detector.reliability, detector.use_reliability, 60, asyncio.Event())
    table = await learner.refresh()
    assert (table.cells[cell].approved, table.cells[cell].corrected) == (4, 1)
    assert table.version == "learnt+5-decisions"
    assert detector.reliability is table
    await detector.handle(_enrichment("learn-9", "CTO"))
    latest = (await _emitted(pool, "proposal"))[-1]
    basis = latest.evidence["confidence_basis"]
    assert (basis["table"], basis["method"]) == ("learnt+5-decisions", "reviewer_outcomes")
    assert [(c["approved"], c["corrected"]) for c in basis["cells"]] == [(4, 1)]
    assert "lower_bound" in basis
    assert await learner.refresh() is table  # nothing new: the same table
    # A file learnt after these decisions already holds them: they are not added again.
    filed = ReliabilityTable(version="file-1", learned_at=utcnow(), cells={cell: CellCounts(approved=9)})
    used: list[ReliabilityTable] = []
    assert (await Learner(pool, filed, used.append, 60, asyncio.Event()).refresh()) is filed
    assert used == []


async def test_calibrate_from_the_database_writes_the_table_the_recorded_decisions_teach(
    parts: tuple[Detector, ProposalLifecycle], pool: asyncpg.Pool, settings: CommonSettings, tmp_path: Path
) -> None:
    detector, lifecycle = parts
    for n in range(4):
        await detector.handle(_enrichment(f"cal-{n}", "CTO"))
    proposals = await _emitted(pool, "proposal")
    [cell] = {c["cell"] for p in proposals for c in p.evidence["confidence_basis"]["cells"]}
    for decision in [
        _decision(proposals[0]),
        _decision(proposals[1]),
        _decision(proposals[2], DecisionOutcome.REJECTED),
    ]:
        await lifecycle.on_decision(make_envelope(decision, service="review-api"))
    out = tmp_path / "reliability.json"
    args = ["detector", "calibrate", "--from-database", "--database-url", settings.database_url]
    args += ["--out", str(out), "--workdir", str(tmp_path), "--level", "0.99"]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    table = reliability.load(out)
    assert table.cells == {cell: CellCounts(approved=2, corrected=1)}
    assert table.level == 0.99
    assert table.learned_from.startswith("3 human decisions recorded in the detector's database up to ")
    assert table.learned_at is not None
    # The file holds every decision made up to its learned_at: the detector's online learning
    # starting from it adds none of them again, and only the next decision.
    used: list[ReliabilityTable] = []
    learner = Learner(pool, table, used.append, 60, asyncio.Event())
    assert await learner.refresh() is table
    await lifecycle.on_decision(make_envelope(_decision(proposals[3]), service="review-api"))
    assert (await learner.refresh()).cells == {cell: CellCounts(approved=3, corrected=1)}


async def test_calibrate_from_a_database_the_detector_never_migrated_says_so(
    fresh_database: str, tmp_path: Path
) -> None:
    out = tmp_path / "reliability.json"
    args = ["detector", "calibrate", "--from-database", "--database-url", fresh_database, "--out", str(out)]
    result = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "the detector has not migrated it" in result.output
    assert not out.exists()
