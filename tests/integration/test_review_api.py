"""The review API /v1 through the real review-api process (and the executor where a decision must
execute), on the real broker and PostgreSQL: pages and filters, the detail of any proposal whatever
its route, four-eyes, the 409 race, If-Match, idempotency keys, expiry and supersession, bulk
actions, statistics, the live stream and the metrics."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from changegate.cli.embedded import free_port
from changegate.core.auth import Role
from changegate.core.auth.tokens import create_token
from changegate.core.contracts import (
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
    ProposalSource,
    ReviewRequest,
    Trigger,
)
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.envelope import make_envelope
from changegate.core.kafka import make_producer, publish
from changegate.core.serde import decode
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames
from changegate.executor.crm import sandbox
from changegate.review_api import queue
from helpers import ServiceProcess, eventually, read_topic, service_process, signing_key, verifier

PEOPLE = {
    "alice@example.com": Role.REVIEWER,
    "bob@example.com": Role.REVIEWER,
    "carol@example.com": Role.REVIEWER,
    "root@example.com": Role.ADMIN,
    "vera@example.com": Role.VIEWER,
    " Alice@Example.COM": Role.REVIEWER,  # alice again, as another token names her
}


def proposal(
    record_id: str | None = None,
    kind: ProposalKind = ProposalKind.FIELD_UPDATE,
    changes: dict[str, tuple[Any, Any]] | None = None,
    confidence: float = 0.7,
    system: str = "clay",
    requested_by: str | None = None,
    evidence: dict[str, Any] | None = None,
    others: list[str] | None = None,
) -> Proposal:
    rid = record_id or f"r-{uuid.uuid4().hex[:8]}"
    field_changes = [
        FieldChange(field=f, previous=p, proposed=v)
        for f, (p, v) in (changes or {"jobtitle": ("Engineer", "Staff Engineer")}).items()
    ]
    return signing_key("detector").sign(  # what executes is a proposal its producer signed
        Proposal(
            proposal_id=uuid.uuid4(),
            kind=kind,
            object_type=ObjectType.CONTACT,
            record_id=rid,
            other_record_ids=others or [],
            changes=field_changes,
            source=ProposalSource(
                system=system,
                event_id=f"e-{rid}",
                detector="test",
                detector_version="1",
                trigger=Trigger.RULE,
            ),
            confidence=confidence,
            rationale=f"a test proposal for {rid}",
            evidence=evidence or {},
            proposed_at=utcnow(),
            requested_by=requested_by,
        )
    )


def review_request(p: Proposal, queue_name: str = "default", **options: Any) -> ReviewRequest:
    return ReviewRequest(
        proposal=p,
        queue=queue_name,
        routed_by=Decider(
            kind="policy", identity="policy:t", policy_version="t", policy_hash="h" * 8, rule_id="test-rule"
        ),
        explanation="sent to review: test-rule",
        **options,
    )


async def enqueue(pool: asyncpg.Pool, p: Proposal | None = None, **options: Any) -> str:
    p = p or proposal()
    await queue.enqueue(pool, review_request(p, **options))
    return str(p.proposal_id)


@pytest.fixture
def review_api(settings: CommonSettings, topics: None, tmp_path: Path) -> Iterator[ServiceProcess]:
    env = {"CHANGEGATE_REVIEW_DECISION_RATE_LIMIT": "10000/minute"}
    with service_process(
        "changegate.review_api", settings, free_port(), tmp_path / "review.log", **env
    ) as svc:
        yield svc


@pytest.fixture
async def tokens(pool: asyncpg.Pool) -> dict[str, str]:
    issued = {}
    for name, role in PEOPLE.items():
        _, issued[name] = await create_token(pool, name, role, created_by="test")
    return issued


@pytest.fixture
async def api(review_api: ServiceProcess, tokens: dict[str, str]) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=review_api.url, timeout=30) as client:
        yield Api(client, tokens)


@pytest.fixture
async def producer(settings: CommonSettings) -> AsyncIterator[AIOKafkaProducer]:
    producer = make_producer(settings, "test")
    await producer.start()
    yield producer
    await producer.stop()


class Api:
    def __init__(self, client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
        self.client, self.tokens = client, tokens

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def get(self, path: str, who: str = "vera@example.com", **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params, headers=self.auth(who))

    async def post(
        self, path: str, who: str = "alice@example.com", body: Any = None, **headers: str
    ) -> httpx.Response:
        return await self.client.post(path, json=body, headers=self.auth(who) | headers)

    async def item(self, pid: str) -> dict[str, Any]:
        response = await self.get(f"/v1/proposals/{pid}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


async def test_pages_are_sorted_by_priority_then_age_filtered_and_keyset(
    api: Api, pool: asyncpg.Pool
) -> None:
    ids = {}
    for n, priority in enumerate(["low", "normal", "high", "normal", "high", "low", "normal"]):
        p = proposal(confidence=0.1 * (n + 1), system="clay" if n % 2 else "zerobounce")
        ids[n] = await enqueue(pool, p, priority=priority, queue_name="dedup" if n == 3 else "default")
    everything: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await api.get("/v1/proposals", **params)).json()
        everything += [i["proposal_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # high (2, 4), normal (1, 3, 6), low (0, 5): each group oldest first; every item once.
    assert everything == [ids[n] for n in (2, 4, 1, 3, 6, 0, 5)]

    async def listed(**params: Any) -> list[str]:
        response = await api.get("/v1/proposals", **params)
        assert response.status_code == 200, response.text
        return [i["proposal_id"] for i in response.json()["items"]]

    assert await listed(queue="dedup") == [ids[3]]
    assert set(await listed(source_system="zerobounce")) == {ids[0], ids[2], ids[4], ids[6]}
    assert set(await listed(min_confidence=0.45, max_confidence=0.65)) == {ids[4], ids[5]}
    assert await listed(min_age="1h") == []
    assert len(await listed(max_age="1h")) == 7
    assert len(await listed(rule="test-rule", kind="field_update", object_type="contact")) == 7
    rid = (await api.item(ids[0]))["record_id"]
    assert await listed(record_id=rid) == [ids[0]]
    assert await listed(status="approved") == []

    # Refused, not ignored: an unknown parameter, a bad cursor, a bad age, a bad status.
    body = problem(await api.get("/v1/proposals", qeue="dedup"), 422)
    assert body["errors"][0]["loc"] == ["query", "qeue"]
    problem(await api.get("/v1/proposals", cursor="bm90IGEgY3Vyc29y"), 422)
    problem(await api.get("/v1/proposals", min_age="yesterday"), 422)
    problem(await api.get("/v1/proposals", status="maybe"), 422)
    problem(await api.get("/v1/stats", verbose="1"), 422)
    problem(await api.client.get("/v1/proposals"), 401)


async def test_detail_of_a_pending_item_has_current_values_policy_and_etag(
    api: Api, pool: asyncpg.Pool
) -> None:
    pid = await enqueue(pool, required_approvals=2)
    response = await api.get(f"/v1/proposals/{pid}")
    assert response.status_code == 200
    body = response.json()
    assert response.headers["etag"] == f'"{body["version"]}"'
    assert body["status"] == "pending"
    assert body["route"] == "review"
    assert body["policy"]["rule_id"] == "test-rule"
    assert body["policy"]["explanation"] == "sent to review: test-rule"
    assert body["approvals"] == {"given": 0, "required": 2}
    [change] = body["fields"]
    assert (change["previous"], change["proposed"], change["final"]) == (
        "Engineer",
        "Staff Engineer",
        "Staff Engineer",
    )
    # The only value seen of the field is the one the detector saw: current, from the proposal.
    assert change["current"]["value"] == "Engineer"
    assert (change["current"]["source"], change["stale"]) == ("proposal", False)
    assert [e["event"] for e in body["history"]] == ["detected", "routed", "enqueued"]
    problem(await api.get(f"/v1/proposals/{uuid.uuid4()}"), 404)
    problem(await api.get("/v1/proposals/not-a-uuid"), 422)


async def decisions(settings: CommonSettings, count: int, timeout: float = 20) -> list[Decision]:
    names = TopicNames(settings.topic_prefix)
    records = await read_topic(settings.kafka_bootstrap_servers, names(Topic.DECISIONS), count, timeout)
    return [decode(r.value, {"decision"}).payload for r in records]  # type: ignore[attr-defined]


async def test_four_eyes_needs_two_distinct_approvers_and_a_rejection_ends_it(
    settings: CommonSettings, api: Api, pool: asyncpg.Pool
) -> None:
    pid = await enqueue(pool, required_approvals=2)
    first = await api.post(f"/v1/proposals/{pid}/approve", "alice@example.com", {"comment": "looks right"})
    assert first.status_code == 200, first.text
    assert (first.json()["decided"], first.json()["outcome"]) == (False, "pending")
    assert first.json()["approvals"] == {"given": 1, "required": 2}
    # The same person twice does not count twice (whatever the case of their identity).
    again = problem(await api.post(f"/v1/proposals/{pid}/approve", " Alice@Example.COM"), 409)
    assert again["reason"] == "already_approved"
    second = await api.post(f"/v1/proposals/{pid}/approve", "bob@example.com")
    assert (second.json()["decided"], second.json()["outcome"]) == (True, "approved")
    item = await api.item(pid)
    assert (
        item["decision"]["explanation"] == "approved by alice@example.com, bob@example.com (2 of 2 approvals)"
    )
    assert [(a["identity"], a["comment"]) for a in item["approvals_given"]] == [
        ("alice@example.com", "looks right"),
        ("bob@example.com", None),
    ]
    events = [(e["event"], e["actor"]) for e in item["history"]]
    assert events[2:] == [
        ("enqueued", "test-rule"),
        ("approval", "alice@example.com"),
        ("approval", "bob@example.com"),
        ("decided", "bob@example.com"),
    ]
    # The first decision on the topic is the final one: the partial approval emitted nothing.
    [first_decision] = await decisions(settings, 1)
    assert (first_decision.outcome, first_decision.proposal.proposal_id) == ("approved", uuid.UUID(pid))
    assert first_decision.decided_by.identity == "bob@example.com"
    assert verifier().decision(first_decision) == "review-api"

    # A rejection after one approval ends it: rejected, no second approval needed.
    other = await enqueue(pool, required_approvals=2)
    assert (await api.post(f"/v1/proposals/{other}/approve", "alice@example.com")).status_code == 200
    rejected = await api.post(
        f"/v1/proposals/{other}/reject", "carol@example.com", {"reason": "wrong person"}
    )
    assert rejected.json()["outcome"] == "rejected"
    item = await api.item(other)
    assert (item["status"], item["decision"]["comment"]) == ("rejected", "wrong person")
    assert [e["event"] for e in item["history"]][-2:] == ["approval", "decided"]
    problem(await api.post(f"/v1/proposals/{other}/approve", "bob@example.com"), 409)
    # A reason is required to reject.
    problem(await api.post(f"/v1/proposals/{await enqueue(pool)}/reject", "bob@example.com", {}), 422)


async def test_edited_values_are_approved_as_a_modification_and_need_their_own_approvals(
    api: Api, pool: asyncpg.Pool
) -> None:
    pid = await enqueue(pool, required_approvals=2)
    path = f"/v1/proposals/{pid}/approve-with-changes"
    edited = {"changes": {"jobtitle": "Principal Engineer"}, "comment": "title per LinkedIn"}
    assert (await api.post(path, "alice@example.com", edited)).json()["approvals"] == {
        "given": 1,
        "required": 2,
    }
    # Bob approves the proposal as it was: another set of values, which has one approval of its own.
    assert (await api.post(f"/v1/proposals/{pid}/approve", "bob@example.com")).json()["decided"] is False
    item = await api.item(pid)
    assert item["fields"][0]["final"] == "Principal Engineer"  # the edit awaiting its second approver
    decided = await api.post(path, "carol@example.com", {"changes": {"jobtitle": "Principal Engineer"}})
    assert decided.json()["outcome"] == "approved_with_changes"
    item = await api.item(pid)
    [change] = item["fields"]
    assert (change["proposed"], change["final"], change["edited"]) == (
        "Staff Engineer",
        "Principal Engineer",
        True,
    )
    assert item["status"] == "approved_with_changes"
    problem(
        await api.post(
            f"/v1/proposals/{await enqueue(pool)}/approve-with-changes", body={"changes": {"x": "y"}}
        ),
        422,
    )
    problem(
        await api.post(
            f"/v1/proposals/{await enqueue(pool)}/approve-with-changes", body={"changes": {"jobtitle": 5}}
        ),
        422,
    )


async def test_if_match_and_idempotency_keys(api: Api, pool: asyncpg.Pool) -> None:
    pid = await enqueue(pool, required_approvals=2)
    etag = (await api.get(f"/v1/proposals/{pid}")).headers["etag"]
    assert (
        await api.post(f"/v1/proposals/{pid}/approve", "alice@example.com", **{"If-Match": etag})
    ).status_code == 200
    stale = problem(
        await api.post(f"/v1/proposals/{pid}/approve", "bob@example.com", **{"If-Match": etag}), 412
    )
    assert stale["reason"] == "version"
    assert stale["current"]["approvals"] == {"given": 1, "required": 2}
    fresh = (await api.get(f"/v1/proposals/{pid}")).headers["etag"]
    assert fresh != etag
    problem(await api.post(f"/v1/proposals/{pid}/approve", "bob@example.com", **{"If-Match": "seven"}), 422)

    # A retried POST with the same key gets the first answer, and decides nothing twice.
    other = await enqueue(pool)
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = await api.post(f"/v1/proposals/{other}/approve", "bob@example.com", {"comment": "ok"}, **key)
    retry = await api.post(f"/v1/proposals/{other}/approve", "bob@example.com", {"comment": "ok"}, **key)
    assert first.status_code == retry.status_code == 200
    assert first.content == retry.content
    assert retry.headers["idempotent-replayed"] == "true"
    assert (
        await pool.fetchval("SELECT version FROM review_queue WHERE proposal_id = $1", uuid.UUID(other)) == 2
    )
    # The same key for another request is refused; another identity's keys are its own.
    problem(
        await api.post(f"/v1/proposals/{other}/approve", "bob@example.com", {"comment": "changed"}, **key),
        422,
    )
    problem(
        await api.post(f"/v1/proposals/{other}/approve", "carol@example.com", {"comment": "ok"}, **key), 409
    )
    # A refusal is an answer too: repeated as it was given.
    gone = f"/v1/proposals/{uuid.uuid4()}/approve"
    key = {"Idempotency-Key": "retry-me"}
    assert (await api.post(gone, "bob@example.com", **key)).status_code == 404
    assert (await api.post(gone, "bob@example.com", **key)).headers["idempotent-replayed"] == "true"


async def test_many_concurrent_approvals_make_one_decision_and_one_execution(
    settings: CommonSettings, api: Api, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    p = proposal()
    await sandbox.upsert_record(pool, ObjectType.CONTACT, p.record_id, {"jobtitle": "Engineer"})
    pid = await enqueue(pool, p)
    with service_process("changegate.executor", settings, free_port(), tmp_path / "executor.log"):
        people = ["alice@example.com", "bob@example.com", "carol@example.com", "root@example.com"] * 5
        answers = await asyncio.gather(*(api.post(f"/v1/proposals/{pid}/approve", who) for who in people))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200] + [409] * (len(people) - 1), [a.text for a in answers]
        for loser in (a for a in answers if a.status_code == 409):
            assert loser.json()["current"]["status"] == "approved"
        names = TopicNames(settings.topic_prefix)
        executions = await read_topic(settings.kafka_bootstrap_servers, names(Topic.EXECUTIONS), 1)
        assert len(executions) == 1
        item = await eventually(lambda: api.item(pid), lambda i: i["execution"] is not None, what="executed")
        assert item["execution"]["status"] == "applied"
        assert (await sandbox.get_record(pool, ObjectType.CONTACT, p.record_id) or {})[
            "jobtitle"
        ] == "Staff Engineer"
    assert [d.decision_id for d in await decisions(settings, 1)] == [executions_decision_id(executions[0])]
    assert await pool.fetchval("SELECT count(*) FROM executor_ledger") == 1
    # After the execution: the current value is the one the executor wrote.
    [change] = item["fields"]
    assert (change["current"]["value"], change["current"]["source"]) == ("Staff Engineer", "execution")
    assert [e["event"] for e in item["history"]][-2:] == ["decided", "executed"]


def executions_decision_id(record: Any) -> uuid.UUID:
    execution: Execution = decode(record.value, {"execution"}).payload
    return execution.decision.decision_id


async def publish_payload(
    settings: CommonSettings, producer: AIOKafkaProducer, topic: Topic, payload: Any
) -> None:
    names = TopicNames(settings.topic_prefix)
    await publish(
        producer,
        names(topic),
        payload.decision.proposal.record_id if isinstance(payload, Execution) else payload.proposal.record_id,
        make_envelope(payload, service="test"),
    )


async def test_an_auto_applied_proposal_can_be_read_with_its_rule_and_execution(
    settings: CommonSettings, api: Api, producer: AIOKafkaProducer
) -> None:
    p = proposal(changes={"jobtitle": (None, "CTO")}, confidence=0.95)
    decision = signing_key("policy").sign(
        Decision(
            decision_id=Decision.policy_decision_id(p.proposal_id, "h" * 8),
            proposal=p,
            outcome=DecisionOutcome.AUTO_APPROVED,
            decided_by=Decider(
                kind="policy",
                identity="policy:v1",
                policy_version="v1",
                policy_hash="h" * 8,
                rule_id="fill-empty",
            ),
            decided_at=utcnow(),
            explanation="auto-applied: rule fill-empty, confidence 0.95 ≥ 0.85",
            final_changes=list(p.changes),
        )
    )
    execution = signing_key("executor").sign(
        Execution(
            execution_id=Execution.make_id(decision.decision_id),
            decision=decision,
            status=ExecutionStatus.APPLIED,
            writes=[FieldWrite(field="jobtitle", expected=None, overwritten=None, new="CTO")],
            crm_target="sandbox",
            executed_at=utcnow(),
        )
    )
    # The execution first: it overtakes its decision (another topic); both are kept all the same.
    await publish_payload(settings, producer, Topic.EXECUTIONS, execution)
    await publish_payload(settings, producer, Topic.DECISIONS, decision)
    pid = str(p.proposal_id)

    async def read() -> httpx.Response:
        return await api.get(f"/v1/proposals/{pid}")

    response = await eventually(read, lambda r: r.status_code == 200, what="the auto-applied proposal")
    item = response.json()
    assert (item["status"], item["route"], item["queue"]) == ("auto_approved", "auto_apply", None)
    assert item["policy"] == {
        "route": "auto_apply",
        "rule_id": "fill-empty",
        "policy_version": "v1",
        "policy_hash": "h" * 8,
        "explanation": "auto-applied: rule fill-empty, confidence 0.95 ≥ 0.85",
    }
    assert item["rationale"] == p.rationale
    assert item["execution"]["status"] == "applied"
    assert [e["event"] for e in item["history"]] == ["detected", "routed", "decided", "executed"]
    assert item["fields"][0]["current"]["value"] == "CTO"
    listed = (await api.get("/v1/proposals", status="auto_approved")).json()["items"]
    assert [i["proposal_id"] for i in listed] == [pid]
    # A forged auto-approval (unsigned) is never shown.
    forged = proposal()
    unsigned = decision.model_copy(update={"proposal": forged, "signature": None})
    await publish_payload(settings, producer, Topic.DECISIONS, unsigned)
    problem(await api.get(f"/v1/proposals/{forged.proposal_id}"), 404)


async def test_expiry_and_supersession_through_the_api(
    settings: CommonSettings, api: Api, pool: asyncpg.Pool, producer: AIOKafkaProducer
) -> None:
    overdue = await enqueue(pool, expires_at=utcnow() - timedelta(seconds=1))
    body = problem(await api.post(f"/v1/proposals/{overdue}/approve"), 409)
    assert body["reason"] == "expired"
    item = await eventually(lambda: api.item(overdue), lambda i: i["status"] == "expired", what="expired")
    assert item["history"][-1]["event"] == "expired"
    assert item["decision"]["decider_kind"] == "system"
    assert problem(await api.post(f"/v1/proposals/{overdue}/approve"), 409)["current"]["status"] == "expired"

    older = proposal()
    pid = await enqueue(pool, older)
    retirement = signing_key("detector").sign(
        Decision(
            decision_id=uuid.uuid4(),
            proposal=older,
            outcome=DecisionOutcome.SUPERSEDED,
            decided_by=Decider(kind="system", identity="detector"),
            decided_at=utcnow(),
            explanation="superseded by a newer proposal",
        )
    )
    await publish_payload(settings, producer, Topic.DECISIONS, retirement)
    item = await eventually(lambda: api.item(pid), lambda i: i["status"] == "superseded", what="superseded")
    assert (item["history"][-1]["event"], item["history"][-1]["actor"]) == ("superseded", "detector")
    body = problem(await api.post(f"/v1/proposals/{pid}/approve"), 409)
    assert body["detail"] == f"proposal {pid} is already superseded"


async def test_bulk_actions_dry_run_cap_and_skips(api: Api, pool: asyncpg.Pool) -> None:
    ids = [await enqueue(pool, proposal(system="neverbounce"), queue_name="verify") for _ in range(5)]
    await enqueue(pool, proposal(system="clay"), queue_name="verify")
    own = await enqueue(
        pool, proposal(system="neverbounce", requested_by="root@example.com"), queue_name="verify"
    )
    decided = ids[0]
    assert (await api.post(f"/v1/proposals/{decided}/reject", body={"reason": "no"})).status_code == 200
    filter_ = {"queue": "verify", "source_system": "neverbounce"}
    # Admin only.
    problem(
        await api.post("/v1/bulk", "alice@example.com", {"action": "approve", "filter": filter_}),
        403,
    )
    dry = await api.post(
        "/v1/bulk", "root@example.com", {"action": "approve", "filter": filter_, "dry_run": True}
    )
    assert dry.status_code == 200, dry.text
    assert (dry.json()["matched"], dry.json()["would_decide"], dry.json()["done"]) == (5, 5, [])
    assert await pool.fetchval("SELECT count(*) FROM review_queue WHERE status = 'pending'") == 6
    capped = (
        await api.post(
            "/v1/bulk", "root@example.com", {"action": "approve", "filter": filter_, "max_items": 2}
        )
    ).json()
    assert (capped["matched"], capped["capped"], len(capped["done"])) == (5, True, 2)
    by_ids = (
        await api.post(
            "/v1/bulk",
            "root@example.com",
            {"action": "approve", "ids": [*ids, own, str(uuid.uuid4())], "comment": "batch checked"},
        )
    ).json()
    skipped = {s["proposal_id"]: s["reason"] for s in by_ids["skipped"]}
    assert skipped[decided] == "decided"
    assert skipped[own] == "own"  # nobody approves what they asked for, in bulk neither
    assert sum(1 for r in skipped.values() if r == "missing") == 1
    assert len([s for s in skipped.values() if s == "decided"]) == 3  # the rejected one and the two capped
    assert {d["outcome"] for d in by_ids["done"]} == {"approved"}
    assert len(by_ids["done"]) == 2
    problem(await api.post("/v1/bulk", "root@example.com", {"action": "reject", "ids": ids}), 422)
    problem(await api.post("/v1/bulk", "root@example.com", {"action": "approve"}), 422)


async def test_stats_stream_and_metrics(api: Api, pool: asyncpg.Pool, review_api: ServiceProcess) -> None:
    events: list[dict[str, Any]] = []
    connected = asyncio.Event()

    async def listen() -> None:
        async with api.client.stream("GET", "/v1/events", headers=api.auth("vera@example.com")) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            connected.set()
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if len(events) >= 3:
                        return

    listener = asyncio.create_task(listen())
    await asyncio.wait_for(connected.wait(), 10)
    await asyncio.sleep(0.2)  # the stream is subscribed once its first bytes are sent
    pid = await enqueue(pool, proposal(kind=ProposalKind.MERGE), queue_name="dedup", required_approvals=2)
    await api.post(f"/v1/proposals/{pid}/approve", "alice@example.com")
    await api.post(f"/v1/proposals/{pid}/approve", "bob@example.com")
    await asyncio.wait_for(listener, 10)
    assert [(e["event"], e["proposal_id"]) for e in events] == [
        ("enqueued", pid),
        ("approval", pid),
        ("approval", pid),
    ]
    # Resuming after the first event replays what followed from the history table.
    resumed: list[str] = []
    async with api.client.stream(
        "GET", "/v1/events", headers=api.auth("vera@example.com") | {"Last-Event-ID": str(events[0]["seq"])}
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                resumed.append(line[7:])
                if len(resumed) == 3:
                    break
    assert resumed == ["approval", "approval", "decided"]
    problem(await api.client.get("/v1/events"), 401)
    problem(await api.get("/v1/events", kind="nope"), 422)
    problem(await api.get("/v1/events", since="1"), 422)  # unknown parameter
    problem(await api.client.get("/v1/stats"), 401)

    stats = (await api.get("/v1/stats")).json()
    assert stats["total"] == 0
    await enqueue(pool, queue_name="dedup")
    stats = (await api.get("/v1/stats")).json()
    assert [(q["kind"], q["queue"], q["depth"]) for q in stats["queues"]] == [("field_update", "dedup", 1)]

    metrics = await eventually(
        lambda: api.client.get("/metrics"),
        lambda r: 'changegate_review_pending_proposals{kind="field_update",queue="dedup"} 1.0' in r.text,
        what="queue depth by kind and queue",
    )
    text = metrics.text
    assert 'changegate_review_decisions_total{outcome="approved"} 1.0' in text
    assert 'changegate_review_time_to_decision_seconds_count{kind="merge"} 1.0' in text
    assert 'route="/v1/proposals/{proposal_id}/approve"' in text
    assert "changegate_http_request_duration_seconds_bucket" in text
    assert pid not in text  # route templates, never raw paths
