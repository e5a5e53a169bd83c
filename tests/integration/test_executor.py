"""The executor's handler against PostgreSQL and the sandbox CRM (then the HubSpot simulator):
exactly once through the ledger, compare-and-set conflicts re-proposed, unknown outcomes resolved by
reading, merges, owners — every execution signed."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from changegate.core import policy_versions
from changegate.core.contracts import (
    Decider,
    DecisionOutcome,
    ExecutionStatus,
    FieldChange,
    ObjectType,
    ProposalKind,
)
from changegate.core.contracts.envelope import make_envelope
from changegate.core.db import migrate, migrate_core
from changegate.core.errors import BackpressureError
from changegate.core.serde import decode
from changegate.core.settings import CommonSettings
from changegate.core.signing import SignatureRefusedError
from changegate.core.topics import TopicNames
from changegate.executor import ledger
from changegate.executor.crm import sandbox
from changegate.executor.crm.breaker import Breaker, State
from changegate.executor.crm.hubspot.adapter import HubSpotCrm
from changegate.executor.crm.hubspot.client import HubSpotClient
from changegate.executor.crm.port import CrmUnavailableError, WriteItem, WriteResult, WriteStatus
from changegate.executor.crm.sandbox import SandboxCrm
from changegate.executor.handler import Executor
from changegate.hubspot_sim import TOKEN, SimServer
from helpers import approved_decision, signing_key, verifier

C = ObjectType.CONTACT


@pytest.fixture
async def executor(settings: CommonSettings, pool: asyncpg.Pool) -> Executor:
    await migrate_core(pool)
    await migrate(pool, "executor", "changegate.executor.migrations")
    crm = SandboxCrm(pool)
    breaker = Breaker(crm.target)
    return Executor(
        pool, TopicNames(settings.topic_prefix), signing_key("executor"), verifier(), crm, breaker
    )


async def _emitted(pool: asyncpg.Pool, event_type: str) -> list[Any]:
    rows = await pool.fetch("SELECT value FROM changegate_outbox ORDER BY id")
    return [e.payload for r in rows if (e := decode(r["value"])).event_type == event_type]


async def _version(pool: asyncpg.Pool, record_id: str) -> int:
    version: int = await pool.fetchval(
        "SELECT version FROM sandbox_crm_records WHERE record_id = $1", record_id
    )
    return version


async def test_a_decision_is_applied_once_however_often_it_is_delivered(
    executor: Executor, pool: asyncpg.Pool
) -> None:
    await sandbox.upsert_record(pool, C, "r1", {"jobtitle": "Engineer"})
    decision = approved_decision("r1", {"jobtitle": ("Engineer", "CTO")})
    envelope = make_envelope(decision, service="review-api")
    for _ in range(3):  # redelivered twice
        await executor.handle(envelope)
    [execution] = await _emitted(pool, "execution")
    assert (execution.status, execution.attempts) == (ExecutionStatus.APPLIED, 1)
    assert [(w.overwritten, w.new) for w in execution.writes] == [("Engineer", "CTO")]
    assert verifier().execution(execution) == "executor"
    assert await _version(pool, "r1") == 2  # created, then written once
    row = await pool.fetchrow(
        "SELECT state, status FROM executor_ledger WHERE decision_id = $1", decision.decision_id
    )
    assert tuple(row or ()) == ("done", "applied")


async def test_a_stale_proposal_writes_nothing_and_goes_back_to_review(
    executor: Executor, pool: asyncpg.Pool
) -> None:
    await sandbox.upsert_record(pool, C, "r2", {"jobtitle": "Director"})
    decision = approved_decision("r2", {"jobtitle": ("Engineer", "CTO")})
    await executor.handle(make_envelope(decision, service="t"))
    [execution] = await _emitted(pool, "execution")
    assert execution.status is ExecutionStatus.CONFLICT
    assert execution.error == "changed since proposed: jobtitle"
    assert await _version(pool, "r2") == 1
    [request] = await _emitted(pool, "review_request")
    assert (request.queue, request.priority) == ("conflicts", "high")
    assert request.proposal.changes == [FieldChange(field="jobtitle", previous="Director", proposed="CTO")]
    # The re-proposal and its request are the executor's, signed: review-api accepts them.
    assert verifier().review_request(request) == "executor"
    assert request.proposal.signature is not None
    assert request.proposal.signature.signer == "executor"


async def test_a_policy_decision_executes_only_under_a_recorded_policy_version(
    executor: Executor, pool: asyncpg.Pool
) -> None:
    """A stolen policy key cannot make up a policy: the version must be one the policy service
    loaded and recorded (only its database role may)."""
    await sandbox.upsert_record(pool, C, "r9", {"jobtitle": None})
    human = approved_decision("r9", {"jobtitle": (None, "CTO")})
    by = Decider(kind="policy", identity="policy:v1", policy_version="v1", policy_hash="c" * 64, rule_id="r")
    auto = human.model_copy(
        update={"outcome": DecisionOutcome.AUTO_APPROVED, "decided_by": by, "decision_id": uuid.uuid4()}
    )
    auto = signing_key("policy").sign(auto)
    with pytest.raises(SignatureRefusedError) as info:
        await executor.handle(make_envelope(auto, service="policy"))
    assert info.value.reason == "unknown_policy_version"
    assert (await sandbox.get_record(pool, C, "r9") or {})["jobtitle"] is None
    # The same hash under another version name is not the recorded policy either.
    await policy_versions.record(pool, version="v0", content_hash="c" * 64, source="p.yaml", content="x")
    with pytest.raises(SignatureRefusedError):
        await executor.handle(make_envelope(auto, service="policy"))
    await pool.execute("UPDATE changegate_policy_versions SET version = 'v1'")
    await executor.handle(make_envelope(auto, service="policy"))
    [execution] = await _emitted(pool, "execution")
    assert execution.status is ExecutionStatus.APPLIED


async def test_a_write_that_landed_before_a_crash_is_recognised_never_repeated(
    executor: Executor, pool: asyncpg.Pool
) -> None:
    await sandbox.upsert_record(pool, C, "r3", {"jobtitle": "Engineer"})
    decision = approved_decision("r3", {"jobtitle": ("Engineer", "CTO")})
    # The process died after the CRM took the write and before the ledger said so.
    async with pool.acquire() as conn:
        await ledger.open_entry(conn, decision, "sandbox")
        await ledger.observe(conn, {decision.decision_id: {"jobtitle": "Engineer"}})
    await SandboxCrm(pool).write(C, "r3", decision.final_changes)
    assert await _version(pool, "r3") == 2
    await executor.handle(make_envelope(decision, service="review-api"))
    [execution] = await _emitted(pool, "execution")
    assert (execution.status, execution.attempts) == (ExecutionStatus.APPLIED, 2)
    assert [(w.overwritten, w.new) for w in execution.writes] == [("Engineer", "CTO")]
    assert await _version(pool, "r3") == 2  # read, not written again


async def test_a_crash_before_the_write_landed_writes_once_on_redelivery(
    executor: Executor, pool: asyncpg.Pool
) -> None:
    await sandbox.upsert_record(pool, C, "r4", {"jobtitle": "Engineer"})
    decision = approved_decision("r4", {"jobtitle": ("Engineer", "CTO")})
    async with pool.acquire() as conn:
        await ledger.open_entry(conn, decision, "sandbox")
        await ledger.observe(conn, {decision.decision_id: {"jobtitle": "Engineer"}})  # died right after
    await executor.handle(make_envelope(decision, service="review-api"))
    [execution] = await _emitted(pool, "execution")
    assert execution.status is ExecutionStatus.APPLIED
    assert await _version(pool, "r4") == 2


async def test_a_value_already_there_is_a_noop(executor: Executor, pool: asyncpg.Pool) -> None:
    await sandbox.upsert_record(pool, C, "r5", {"email": "ADA@example.com"})
    decision = approved_decision("r5", {"email": (None, "ada@example.com")})
    await executor.handle(make_envelope(decision, service="t"))
    [execution] = await _emitted(pool, "execution")
    assert execution.status is ExecutionStatus.NOOP
    assert await _version(pool, "r5") == 1


async def test_an_approved_merge_fills_the_survivor_and_redirects_the_loser(
    executor: Executor, pool: asyncpg.Pool
) -> None:
    await sandbox.upsert_record(pool, C, "s1", {"email": "a@x.io", "phone": ""})
    await sandbox.upsert_record(pool, C, "l1", {"email": "a@x.io", "phone": "+1 415"})
    decision = approved_decision(
        "s1",
        {"phone": (None, "+1 415"), "hs_merged_object_ids": (None, "l1")},
        kind=ProposalKind.MERGE,
        others=["l1"],
    )
    await executor.handle(make_envelope(decision, service="review-api"))
    [execution] = await _emitted(pool, "execution")
    assert (execution.status, execution.merged_into) == (ExecutionStatus.APPLIED, "s1")
    assert {w.field: w.new for w in execution.writes} == {"phone": "+1 415", "hs_merged_object_ids": "l1"}
    assert await sandbox.merged_into(pool, C, "l1") == "s1"
    survivor = await sandbox.get_record(pool, C, "s1") or {}
    assert (survivor["phone"], survivor["hs_merged_object_ids"]) == ("+1 415", "l1")


async def test_an_owner_change_assigns_only_an_active_owner(executor: Executor, pool: asyncpg.Pool) -> None:
    await sandbox.upsert_owner(pool, "owner-west")
    await sandbox.upsert_owner(pool, "owner-gone", archived=True)
    for rid in ("o1", "o2", "o3"):
        await sandbox.upsert_record(pool, C, rid, {"hubspot_owner_id": "owner-17"})
    for rid, owner in (("o1", "owner-west"), ("o2", "owner-gone"), ("o3", "owner-who")):
        decision = approved_decision(
            rid, {"hubspot_owner_id": ("owner-17", owner)}, kind=ProposalKind.OWNER_REASSIGNMENT
        )
        await executor.handle(make_envelope(decision, service="review-api"))
    statuses = [
        (e.decision.proposal.record_id, e.status.value, e.error) for e in await _emitted(pool, "execution")
    ]
    assert statuses == [
        ("o1", "applied", None),
        ("o2", "failed", "owner owner-gone is archived: not assigned"),
        ("o3", "failed", "owner owner-who is unknown: not assigned"),
    ]
    assert [(await sandbox.get_record(pool, C, r) or {})["hubspot_owner_id"] for r in ("o1", "o2", "o3")] == [
        "owner-west",
        "owner-17",
        "owner-17",
    ]


async def test_the_same_guarantees_against_the_hubspot_simulator(
    settings: CommonSettings, pool: asyncpg.Pool, hubspot_sim: SimServer
) -> None:
    await migrate_core(pool)
    await migrate(pool, "executor", "changegate.executor.migrations")
    hubspot_sim.reset()
    hubspot_sim.records(
        {"id": "11", "properties": {"jobtitle": "Engineer"}},
        {"id": "12", "properties": {"jobtitle": "Director"}},
        {"id": "13", "properties": {"email": "a@x.io", "phone": ""}},
        {"id": "14", "properties": {"email": "a@x.io", "phone": "+1"}},
        {"id": "15", "properties": {"hubspot_owner_id": "77"}},
    )
    hubspot_sim.owners({"id": "78", "email": "west@x.io"})
    crm = HubSpotCrm(HubSpotClient(hubspot_sim.url, TOKEN, attempts=3))
    executor = Executor(
        pool,
        TopicNames(settings.topic_prefix),
        signing_key("executor"),
        verifier(),
        crm,
        Breaker("hubspot"),
    )
    try:
        applied = approved_decision("11", {"jobtitle": ("Engineer", "CTO")})
        for _ in range(2):
            await executor.handle(make_envelope(applied, service="review-api"))
        field_update = approved_decision("12", {"jobtitle": ("Engineer", "CTO")})
        await executor.handle(make_envelope(field_update, service="t"))
        merge = approved_decision(
            "13", {"phone": (None, "+1"), "hs_merged_object_ids": (None, "14")}, ProposalKind.MERGE, ["14"]
        )
        await executor.handle(make_envelope(merge, service="t"))
        owner = approved_decision("15", {"hubspot_owner_id": ("77", "78")}, ProposalKind.OWNER_REASSIGNMENT)
        await executor.handle(make_envelope(owner, service="t"))
    finally:
        await crm.close()
    executions = {e.decision.proposal.record_id: e for e in await _emitted(pool, "execution")}
    assert executions["11"].status is ExecutionStatus.APPLIED
    assert len([c for c in hubspot_sim.calls("/batch/update") if c["body"]["inputs"][0]["id"] == "11"]) == 1
    assert executions["12"].status is ExecutionStatus.CONFLICT
    assert (hubspot_sim.record("12") or {})["properties"]["jobtitle"] == "Director"
    assert executions["13"].status is ExecutionStatus.APPLIED
    assert executions["13"].merged_into not in (None, "13", "14")
    assert (hubspot_sim.record("14") or {})["id"] == executions["13"].merged_into
    assert executions["15"].status is ExecutionStatus.APPLIED
    assert (hubspot_sim.record("15") or {})["properties"]["hubspot_owner_id"] == "78"
    assert hubspot_sim.log()["violations"] == []


async def test_the_breaker_opens_on_an_outage_probes_and_closes(hubspot_sim: SimServer) -> None:
    hubspot_sim.reset()
    hubspot_sim.records({"id": "21", "properties": {"city": "Oslo"}})
    crm = HubSpotCrm(HubSpotClient(hubspot_sim.url, TOKEN, attempts=1))
    breaker = Breaker("hubspot-test", failures=2, cooldown=0.2)
    hubspot_sim.fault(path="/batch/read", status=503, count=4)
    states, waits = [], []
    try:
        with pytest.raises(CrmUnavailableError):  # not open yet: the consumer retries it
            await breaker.call(lambda: crm.read(C, ["21"], ["city"]))
        states.append(breaker.state)
        for _ in range(3):
            with pytest.raises(BackpressureError) as held:  # opens (reopens): pause, do not wait here
                await breaker.call(lambda: crm.read(C, ["21"], ["city"]))
            states.append(breaker.state)
            with pytest.raises(BackpressureError) as early:  # still cooling down: not even a call
                await breaker.call(lambda: crm.read(C, ["21"], ["city"]))
            assert 0 < early.value.retry_after <= held.value.retry_after
            waits.append(held.value.retry_after)
            await asyncio.sleep(held.value.retry_after)
        found = await breaker.call(lambda: crm.read(C, ["21"], ["city"]))
    finally:
        await crm.close()
    # Two failures open it; each probe after a cooldown fails and reopens it for longer; the fifth
    # call closes it.
    assert states == [State.CLOSED, State.OPEN, State.OPEN, State.OPEN]
    assert waits == [0.2, 0.4, 0.8]
    assert breaker.state is State.CLOSED
    assert found["21"].properties == {"city": "Oslo"}
    assert len(hubspot_sim.calls("/batch/read")) == 5  # never more calls than the breaker let through


async def test_a_batch_shares_hubspots_batch_calls_and_a_207_refuses_only_its_own_decision(
    settings: CommonSettings, pool: asyncpg.Pool, hubspot_sim: SimServer
) -> None:
    await migrate_core(pool)
    await migrate(pool, "executor", "changegate.executor.migrations")
    hubspot_sim.reset()
    ids = [str(600 + i) for i in range(150)]
    hubspot_sim.records(*({"id": i, "properties": {"jobtitle": "Engineer"}} for i in ids))
    hubspot_sim.fault(path="/batch/update", fail_ids=["642"])  # a 207: one input refused
    crm = HubSpotCrm(HubSpotClient(hubspot_sim.url, TOKEN, attempts=3))
    executor = Executor(
        pool,
        TopicNames(settings.topic_prefix),
        signing_key("executor"),
        verifier(),
        crm,
        Breaker("h"),
    )
    decisions = [approved_decision(i, {"jobtitle": ("Engineer", "CTO")}) for i in ids]
    # The same record twice: its second decision runs after the first, and sees its write.
    decisions.append(approved_decision("600", {"jobtitle": ("Engineer", "CEO")}))
    try:
        refused = await executor.handle_batch([make_envelope(d, service="review-api") for d in decisions])
    finally:
        await crm.close()
    assert list(refused) == [42]
    assert refused[42].reason == "crm_refused"
    assert "VALIDATION_ERROR" in refused[42].detail
    executions = [e for e in await _emitted(pool, "execution")]
    by_decision = {e.decision.decision_id: e for e in executions}
    assert len(executions) == 150  # every decision but the refused one
    assert decisions[42].decision_id not in by_decision
    assert all(
        by_decision[d.decision_id].status is ExecutionStatus.APPLIED
        for d in decisions[:42] + decisions[43:150]
    )
    assert by_decision[decisions[-1].decision_id].status is ExecutionStatus.CONFLICT  # 600 holds CTO now
    assert (hubspot_sim.record("600") or {})["properties"]["jobtitle"] == "CTO"
    assert (hubspot_sim.record("642") or {})["properties"]["jobtitle"] == "Engineer"
    # 150 records: two batch updates (100 + 50) for the first turn, one more for the second turn's
    # read-compare; never one request per decision.
    updates = hubspot_sim.calls("/batch/update")
    assert [len(c["body"]["inputs"]) for c in updates] == [100, 50]
    assert len(hubspot_sim.calls("/batch/read")) == 2 + 2 + 1  # read and re-read per call, then the turn
    assert hubspot_sim.log()["violations"] == []
    # The refused one stays at intent: a replay resolves it by reading first, never writes blindly.
    state = await pool.fetchval(
        "SELECT state FROM executor_ledger WHERE decision_id = $1", decisions[42].decision_id
    )
    assert state == "intent"


async def test_two_decisions_for_one_record_through_a_merged_away_id_are_compared_in_turn(
    executor: Executor, pool: asyncpg.Pool
) -> None:
    """Different ids that resolve to one record (one merged into the other) in one batch: the
    second is compared with what the first wrote, never with the value read before it."""
    await sandbox.upsert_record(pool, C, "m1", {"jobtitle": "Engineer"})
    await sandbox.upsert_record(pool, C, "m2", {"jobtitle": "Engineer"})
    await SandboxCrm(pool).merge(C, "m1", ["m2"])
    first = approved_decision("m1", {"jobtitle": ("Engineer", "CTO")})
    second = approved_decision("m2", {"jobtitle": ("Engineer", "CEO")})
    await executor.handle_batch([make_envelope(d, service="t") for d in (first, second)])
    statuses = {e.decision.decision_id: e.status for e in await _emitted(pool, "execution")}
    assert statuses == {
        first.decision_id: ExecutionStatus.APPLIED,
        second.decision_id: ExecutionStatus.CONFLICT,
    }
    assert (await sandbox.get_record(pool, C, "m1") or {})["jobtitle"] == "CTO"


async def test_hubspot_writes_ids_that_resolve_to_one_record_in_turns(hubspot_sim: SimServer) -> None:
    hubspot_sim.reset()
    hubspot_sim.records(
        {"id": "701", "properties": {"jobtitle": "Engineer"}},
        {"id": "702", "properties": {"jobtitle": "Engineer"}},
    )
    crm = HubSpotCrm(HubSpotClient(hubspot_sim.url, TOKEN, attempts=3))
    try:
        merged = await crm.merge(C, "701", ["702"])
        first = WriteItem("701", [FieldChange(field="jobtitle", previous="Engineer", proposed="CTO")])
        second = WriteItem("702", [FieldChange(field="jobtitle", previous="Engineer", proposed="CEO")])
        results = await crm.write_many(C, [first, second])
    finally:
        await crm.close()
    assert [r.status for r in results if isinstance(r, WriteResult)] == [
        WriteStatus.APPLIED,
        WriteStatus.CONFLICT,
    ]
    assert (hubspot_sim.record(merged.merged_id) or {})["properties"]["jobtitle"] == "CTO"
    assert hubspot_sim.log()["violations"] == []


async def test_a_replica_spends_only_its_share_of_the_apps_rate_limit(hubspot_sim: SimServer) -> None:
    hubspot_sim.reset()
    hubspot_sim.records({"id": "801", "properties": {"jobtitle": "Engineer"}})
    whole = HubSpotClient(hubspot_sim.url, TOKEN, requests_per_window=4, window_seconds=600)
    third = HubSpotClient(hubspot_sim.url, TOKEN, requests_per_window=4, window_seconds=600)
    third.share = lambda: 1 / 3  # one of three replicas: each call costs three of the four
    try:
        for client in (whole, third):
            await HubSpotCrm(client).read(C, ["801"], ["jobtitle"])
        assert (await whole.remaining(), await third.remaining()) == (3, 0)
    finally:
        await whole.close()
        await third.close()
