"""The policy service as its own process on the real broker and PostgreSQL: all five kinds reach
the right topics, a policy edit takes effect without re-routing what was routed, and a broken edit
is refused while the old policy keeps working."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from changegate.cli.embedded import free_port
from changegate.cli.main import app as cli_app
from changegate.core.auth import Role
from changegate.core.auth.tokens import create_token
from changegate.core.contracts import Decider, Decision, DecisionOutcome, Proposal, ProposalKind
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.envelope import make_envelope
from changegate.core.db import create_pool, migrate
from changegate.core.kafka import make_producer, publish
from changegate.core.serde import decode
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames
from changegate.policy.engine import DEFAULT_POLICY, Action, Policy
from changegate.policy.samples import sample_proposals
from changegate.policy.shadow import ShadowDiff
from helpers import eventually, service_process, signing_key
from typer.testing import CliRunner, Result


@dataclass
class PolicyProcess:
    proc: subprocess.Popen[bytes]
    port: int
    policy_file: Path
    log: Path

    async def metric(self, name: str, **labels: str) -> float:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{self.port}/metrics")).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                head, _, value = line.rpartition(" ")
                if head == name or head.startswith(name + "{"):
                    total += float(value)
        return total


@pytest.fixture
def service(settings: CommonSettings, tmp_path: Path) -> Iterator[PolicyProcess]:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(DEFAULT_POLICY.read_text())
    env = {"CHANGEGATE_POLICY_FILE": str(policy_file), "CHANGEGATE_POLICY_POLL_SECONDS": "0.2"}
    with service_process("changegate.policy", settings, free_port(), tmp_path / "policy.log", **env) as svc:
        yield PolicyProcess(svc.proc, svc.port, policy_file, svc.log)


@pytest.fixture
async def outputs(settings: CommonSettings) -> AsyncIterator[dict[str, list[Any]]]:
    """Everything the service emits, by event type, collected in the background."""
    names = TopicNames(settings.topic_prefix)
    consumer = AIOKafkaConsumer(
        names(Topic.DECISIONS),
        names(Topic.PROPOSALS_PENDING),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
        group_id=None,
    )
    await consumer.start()
    seen: dict[str, list[Any]] = {"decision": [], "review_request": []}

    async def collect() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for r in records:
                    env = decode(r.value)
                    seen[env.event_type].append(env.payload)

    task = asyncio.create_task(collect())
    yield seen
    task.cancel()
    await consumer.stop()


async def _propose(settings: CommonSettings, proposals: list[Proposal]) -> None:
    producer = make_producer(settings, "test")
    await producer.start()
    try:
        for p in proposals:
            await publish(
                producer,
                TopicNames(settings.topic_prefix)(Topic.PROPOSALS),
                p.record_id,
                make_envelope(signing_key("detector").sign(p), service="test", correlation_id=p.proposal_id),
            )
    finally:
        await producer.stop()


def _routed(outputs: dict[str, list[Any]]) -> dict[str, tuple[str, str]]:
    """proposal id -> (route, rule) from what the service emitted."""
    routed: dict[str, tuple[str, str]] = {}
    for d in outputs["decision"]:
        routed[str(d.proposal.proposal_id)] = (d.outcome.value, d.decided_by.rule_id)
    for r in outputs["review_request"]:
        routed[str(r.proposal.proposal_id)] = ("review", r.routed_by.rule_id)
    return routed


async def test_five_kinds_are_routed_to_the_right_topics_and_edits_apply_without_rerouting(
    service: PolicyProcess, settings: CommonSettings, outputs: dict[str, list[Any]], topics: None
) -> None:
    proposals = list(sample_proposals(60, seed=11))
    assert {p.kind for p in proposals} == set(ProposalKind)
    await _propose(settings, proposals)
    routed = await eventually(
        lambda: asyncio.sleep(0, _routed(outputs)), lambda r: len(r) == 60, what="60 routed proposals"
    )
    policy = Policy.load(service.policy_file)
    for p in proposals:
        route = policy.evaluate(p)
        want = {"auto_apply": "auto_approved", "review": "review", "reject": "rejected"}[route.action.value]
        assert routed[str(p.proposal_id)] == (want, route.rule_id), p.kind
    kinds_reviewed = {r.proposal.kind for r in outputs["review_request"]}
    assert {ProposalKind.MERGE, ProposalKind.OWNER_REASSIGNMENT} <= kinds_reviewed
    assert all(
        d.proposal.kind not in (ProposalKind.MERGE, ProposalKind.OWNER_REASSIGNMENT)
        for d in outputs["decision"]
    )
    merge = next(r for r in outputs["review_request"] if r.proposal.kind is ProposalKind.MERGE)
    assert (merge.queue, merge.expires_at is not None) == ("dedup", True)

    # Edit the file: email results now all go to review. The switch is picked up without restart.
    service.policy_file.write_text(
        service.policy_file.read_text()
        .replace('version: "2026-12-04.2"', 'version: "edited"')
        .replace(
            "action: auto_apply\n  - id: email-risky-review", "action: review\n  - id: email-risky-review"
        )
    )
    await eventually(
        lambda: service.metric("changegate_policy_info", version="edited"),
        lambda n: n == 1,
        what="the edited policy to be in force",
    )
    # Both versions are on the record the executor and audit check, each before it decided anything.
    conn = await asyncpg.connect(settings.database_url)
    try:
        recorded = await conn.fetch("SELECT version, policy_hash, content FROM changegate_policy_versions")
    finally:
        await conn.close()
    assert {r["version"] for r in recorded} == {"2026-12-04.2", "edited"}
    edited = next(r for r in recorded if r["version"] == "edited")
    assert edited["content"] == service.policy_file.read_text()
    assert edited["policy_hash"] == Policy.load(service.policy_file).content_hash
    # The same proposals again (redelivery, replay): routed once already, nothing new is emitted.
    before = len(outputs["decision"]) + len(outputs["review_request"])
    await _propose(settings, proposals)
    await eventually(
        lambda: service.metric("changegate_policy_duplicates_total"),
        lambda n: n >= 60,
        what="duplicates recognised",
    )
    assert len(outputs["decision"]) + len(outputs["review_request"]) == before
    # New proposals follow the edited policy.
    fresh = [p for p in sample_proposals(40, seed=12) if p.kind is ProposalKind.EMAIL_VERIFICATION]
    await _propose(settings, fresh)
    routed = await eventually(
        lambda: asyncio.sleep(0, _routed(outputs)),
        lambda r: all(str(p.proposal_id) in r for p in fresh),
        what="fresh emails",
    )
    assert {routed[str(p.proposal_id)][0] for p in fresh} == {"review"}
    fresh_ids = {p.proposal_id for p in fresh}
    versions = {
        r.routed_by.policy_version for r in outputs["review_request"] if r.proposal.proposal_id in fresh_ids
    }
    assert versions == {"edited"}


async def test_a_broken_edit_is_refused_and_the_policy_in_force_stays(
    service: PolicyProcess, settings: CommonSettings, outputs: dict[str, list[Any]], topics: None
) -> None:
    good = service.policy_file.read_text()
    service.policy_file.write_text(good + "  - id: yolo\n    action: auto_apply\n")
    service.proc.send_signal(signal.SIGHUP)
    await eventually(
        lambda: asyncio.sleep(0, service.log.read_text()),
        lambda t: "new policy refused" in t,
        what="the refusal in the log",
    )
    assert "rule 'yolo': would auto-apply merge, owner_reassignment" in service.log.read_text()
    assert await service.metric("changegate_policy_info", version="2026-12-04.2") == 1
    merge = next(p for p in sample_proposals(200, seed=13) if p.kind is ProposalKind.MERGE)
    await _propose(settings, [merge])
    routed = await eventually(lambda: asyncio.sleep(0, _routed(outputs)), lambda r: len(r) == 1, what="merge")
    assert routed[str(merge.proposal_id)] == ("review", "merge-always-review")


async def _decide(settings: CommonSettings, decisions: list[tuple[str, Decision]]) -> None:
    """Publish decisions on the decisions topic, each keyed as given (one key: one partition, in order)."""
    producer = make_producer(settings, "test")
    await producer.start()
    try:
        for key, d in decisions:
            await publish(
                producer,
                TopicNames(settings.topic_prefix)(Topic.DECISIONS),
                key,
                make_envelope(d, service="test"),
            )
    finally:
        await producer.stop()


def _human(proposal: Proposal, outcome: DecisionOutcome, who: str = "alice@example.com") -> Decision:
    final = {
        DecisionOutcome.APPROVED: list(proposal.changes),
        DecisionOutcome.APPROVED_WITH_CHANGES: [
            c.model_copy(update={"proposed": f"{c.proposed} (corrected)"}) for c in proposal.changes
        ],
        DecisionOutcome.REJECTED: [],
    }[outcome]
    return Decision(
        decision_id=uuid.uuid4(),
        proposal=signing_key("detector").sign(proposal),
        outcome=outcome,
        decided_by=Decider(kind="human", identity=who),
        decided_at=utcnow(),
        explanation=f"{outcome.value} by a reviewer",
        final_changes=final,
    )


async def _cli(settings: CommonSettings, *args: str, code: int = 0) -> Result:
    """`changegate policy ARGS` on the test's database (in a thread: the command runs its own loop)."""
    env = {"CHANGEGATE_DATABASE_URL": settings.database_url}
    result = await asyncio.to_thread(CliRunner().invoke, cli_app, ["policy", *args], env=env)
    assert result.exit_code == code, result.output
    return result


async def test_a_shadow_candidate_is_recorded_never_acted_on_compared_with_humans_and_promoted_by_someone(
    service: PolicyProcess,
    settings: CommonSettings,
    outputs: dict[str, list[Any]],
    topics: None,
    tmp_path: Path,
) -> None:
    live = Policy.load(service.policy_file)
    candidate_file = tmp_path / "candidate.yaml"
    candidate_file.write_text(
        live.content.replace(f'version: "{live.version}"', 'version: "candidate-1"').replace(
            "previous_empty: true, min_confidence: 0.98, min_confidence_bound: 0.98",
            "previous_empty: true, min_confidence: 0.6",
        )
    )
    candidate = Policy.load(candidate_file)
    assert "candidate-1" in (await _cli(settings, "shadow", str(candidate_file), "--by", "alice")).output
    await eventually(
        lambda: service.metric("changegate_policy_shadow_info", version="candidate-1"),
        lambda n: n == 1,
        what="the candidate in shadow",
    )
    proposals = list(sample_proposals(120, seed=21))
    await _propose(settings, proposals)
    routed = await eventually(
        lambda: asyncio.sleep(0, _routed(outputs)), lambda r: len(r) == 120, what="120 routed proposals"
    )
    # Acted on: the live policy's routes only, every output under its version.
    for p in proposals:
        route = live.evaluate(p)
        want = {"auto_apply": "auto_approved", "review": "review", "reject": "rejected"}[route.action.value]
        assert routed[str(p.proposal_id)] == (want, route.rule_id)
    assert {d.decided_by.policy_version for d in outputs["decision"]} == {live.version}
    assert {r.routed_by.policy_version for r in outputs["review_request"]} == {live.version}
    # Recorded: the candidate's route of every proposal, some of them different.
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT proposal_id, policy_version, action, rule_id FROM policy_shadow_routes"
        )
    finally:
        await conn.close()
    shadowed = {str(r["proposal_id"]): (r["policy_version"], r["action"], r["rule_id"]) for r in rows}
    assert shadowed == {
        str(p.proposal_id): ("candidate-1", candidate.evaluate(p).action.value, candidate.evaluate(p).rule_id)
        for p in proposals
    }
    looser = [
        p
        for p in proposals
        if candidate.evaluate(p).action is Action.AUTO_APPLY and live.evaluate(p).action is Action.REVIEW
    ]
    assert len(looser) >= 4, "the sample must hold fills the candidate alone auto-applies"
    assert await service.metric(
        "changegate_policy_shadow_routes_total",
        version="candidate-1",
        route="auto_apply",
        live_route="review",
    ) == len(looser)
    # Humans decide some of them: one rejects, one corrects, two approve unchanged. A forged
    # rejection (unsigned) of another is refused: it teaches nothing. Same key: the barrier.
    forged = _human(looser[4] if len(looser) > 4 else proposals[0], DecisionOutcome.REJECTED)
    key = looser[0].record_id
    await _decide(
        settings,
        [
            (key, forged),
            (key, signing_key("review-api").sign(_human(looser[0], DecisionOutcome.REJECTED))),
            (key, signing_key("review-api").sign(_human(looser[1], DecisionOutcome.APPROVED_WITH_CHANGES))),
            (
                key,
                signing_key("review-api").sign(
                    _human(looser[2], DecisionOutcome.APPROVED, "bob@example.com")
                ),
            ),
            (key, signing_key("review-api").sign(_human(looser[3], DecisionOutcome.APPROVED))),
        ],
    )
    await eventually(
        lambda: service.metric("changegate_policy_shadow_human_total", version="candidate-1"),
        lambda n: n == 4,
        what="four human decisions beside shadow routes",
    )
    assert (
        await service.metric(
            "changegate_policy_shadow_human_total",
            version="candidate-1",
            route="auto_apply",
            outcome="rejected",
        )
        == 1
    )
    # The diff, from the API (a viewer without scopes: it counts every queue) and the CLI: per
    # rule, overruled auto-applies, agreement.
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        _, viewer = await create_token(pool, "viewer@example.com", Role.VIEWER, created_by="test")
        _, scoped = await create_token(
            pool, "scoped@example.com", Role.ADMIN, created_by="test", queues=["enrichment"]
        )
    finally:
        await pool.close()
    url = f"http://127.0.0.1:{service.port}/v1/shadow"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {viewer}"}) as client:
        answer = await client.get(url)
        refused = await client.get(url, params={"policy_hash": "x'"})
        anonymous = await client.get(url, headers={"Authorization": ""})
        narrowed = await client.get(url, headers={"Authorization": f"Bearer {scoped}"})
    assert answer.status_code == 200, answer.text
    assert refused.status_code == 422
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"].startswith("application/problem+json")
    assert narrowed.status_code == 403, narrowed.text
    api = ShadowDiff.model_validate(answer.json())
    cli = ShadowDiff.model_validate_json((await _cli(settings, "diff", "--json")).stdout)
    for d in (api, cli):
        assert (d.candidate_version, d.running, d.started_by, d.proposals) == (
            "candidate-1",
            True,
            "alice",
            120,
        )
        assert d.would_auto_apply_overruled == 2
        assert d.changed_routes == sum(
            candidate.evaluate(p).action is not live.evaluate(p).action for p in proposals
        )
        fill = next(r for r in d.rules if (r.side, r.rule) == ("candidate", "enrichment-fill-empty"))
        assert (fill.human_decided, fill.agreed, fill.disagreed, fill.agreement) == (4, 2, 2, 0.5)
        live_rows = [r for r in d.rules if r.side == "live"]
        assert sum(r.left_to_human for r in live_rows) == 4  # live sent them all to a human
        assert sum(r.agreed + r.disagreed for r in live_rows) == 0
    assert api.overruled == []  # counts only on the ops port
    assert {(o.proposal_id, o.outcome) for o in cli.overruled} == {
        (str(looser[0].proposal_id), "rejected"),
        (str(looser[1].proposal_id), "approved_with_changes"),
    }
    # Promotion: explicit, recorded with its author; the service then routes by the candidate.
    promoted = await _cli(
        settings, "promote", "--to", str(service.policy_file), "--by", "carol", "--version", "candidate-1"
    )
    assert "promoted candidate-1" in promoted.output
    assert service.policy_file.read_text() == candidate.content
    await eventually(
        lambda: service.metric("changegate_policy_info", version="candidate-1"),
        lambda n: n == 1,
        what="the promoted policy in force",
    )
    conn = await asyncpg.connect(settings.database_url)
    try:
        recorded = await conn.fetch("SELECT * FROM policy_promotions")
        running = await conn.fetchval("SELECT count(*) FROM policy_candidates WHERE stopped_at IS NULL")
    finally:
        await conn.close()
    assert [
        (r["policy_version"], r["promoted_by"], r["replaced_version"], r["policy_hash"]) for r in recorded
    ] == [("candidate-1", "carol", live.version, candidate.content_hash)]
    assert running == 0
    assert "carol" in (await _cli(settings, "promotions")).output
    again = await _cli(settings, "promote", "--to", str(service.policy_file), "--by", "carol", code=1)
    assert "no candidate policy runs in shadow" in again.output


async def test_the_shadow_setting_runs_a_candidate_from_start(
    settings: CommonSettings, topics: None, tmp_path: Path
) -> None:
    candidate_file = tmp_path / "candidate.yaml"
    candidate_file.write_text(
        DEFAULT_POLICY.read_text().replace('version: "2026-12-04.2"', 'version: "set-2"')
    )
    env = {"CHANGEGATE_SHADOW_POLICY_FILE": str(candidate_file), "CHANGEGATE_POLICY_POLL_SECONDS": "0.2"}
    with service_process("changegate.policy", settings, free_port(), tmp_path / "p.log", **env) as svc:
        process = PolicyProcess(svc.proc, svc.port, DEFAULT_POLICY, svc.log)
        assert await process.metric("changegate_policy_shadow_info", version="set-2") == 1
        proposals = list(sample_proposals(10, seed=5))
        await _propose(settings, proposals)
        await eventually(
            lambda: process.metric("changegate_policy_shadow_routes_total", version="set-2"),
            lambda n: n == 10,
            what="ten shadow routes",
        )
    d = ShadowDiff.model_validate_json((await _cli(settings, "diff", "--json")).stdout)
    assert (d.candidate_version, d.started_by, d.changed_routes) == (
        "set-2",
        "setting CHANGEGATE_SHADOW_POLICY_FILE",
        0,
    )


async def test_suggest_reads_reviewers_decisions_and_writes_a_candidate_the_guardrails_accept(
    settings: CommonSettings, tmp_path: Path
) -> None:
    """412 fills approved unchanged above 0.93 become a suggestion; 150 approved merges do not."""
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        await migrate(pool, "policy", "changegate.policy.migrations")
        now = utcnow()
        rows = [("enrichment-review", "field_update", 0.95)] * 412 + [
            ("merge-always-review", "merge", 0.999)
        ] * 150
        ids = [uuid.uuid4() for _ in rows]
        await pool.execute(
            "INSERT INTO policy_routes (proposal_id, action, rule_id, policy_version, policy_hash,"
            " explanation) SELECT p, 'review', r, 'v', 'h', 'sent to review'"
            " FROM unnest($1::uuid[], $2::text[]) AS t(p, r)",
            ids,
            [r for r, _, _ in rows],
        )
        await pool.execute(
            "INSERT INTO policy_human_decisions (proposal_id, kind, confidence, outcome, decided_by,"
            " proposed_at, decided_at) SELECT p, k, c, 'approved', 'alice', $4, $5"
            " FROM unnest($1::uuid[], $2::text[], $3::float8[]) AS t(p, k, c)",
            ids,
            [k for _, k, _ in rows],
            [c for _, _, c in rows],
            now - timedelta(minutes=5),
            now,
        )
    finally:
        await pool.close()
    out = tmp_path / "candidate.yaml"
    result = await _cli(settings, "suggest", "--out", str(out), "--version", "suggested-1")
    text = " ".join(result.output.split())
    assert "rule enrichment-review: 412 of 412 approved unchanged at or above 0.95 in 30 days" in text
    assert "refused by the guardrails rule merge-always-review: 150 of 150" in text
    assert "would auto-apply merge" in text
    written = Policy.load(out)
    assert written.version == "suggested-1"
    ids_written = [r.id for r in written.document.rules]
    assert "enrichment-review-suggested-auto" in ids_written
    assert "merge-always-review-suggested-auto" not in ids_written
