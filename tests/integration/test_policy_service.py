"""The policy service as its own process on the real broker and PostgreSQL: all five kinds reach
the right topics, a policy edit takes effect without re-routing what was routed, and a broken edit
is refused while the old policy keeps working."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from changegate.cli.embedded import free_port
from changegate.core.contracts import Proposal, ProposalKind
from changegate.core.contracts.envelope import make_envelope
from changegate.core.kafka import make_producer, publish
from changegate.core.serde import decode
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames
from changegate.policy.engine import DEFAULT_POLICY, Policy
from changegate.policy.samples import sample_proposals
from helpers import eventually, service_process, signing_key


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
        .replace('version: "2026-12-01.1"', 'version: "edited"')
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
    assert {r["version"] for r in recorded} == {"2026-12-01.1", "edited"}
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
    assert await service.metric("changegate_policy_info", version="2026-12-01.1") == 1
    merge = next(p for p in sample_proposals(200, seed=13) if p.kind is ProposalKind.MERGE)
    await _propose(settings, [merge])
    routed = await eventually(lambda: asyncio.sleep(0, _routed(outputs)), lambda r: len(r) == 1, what="merge")
    assert routed[str(merge.proposal_id)] == ("review", "merge-always-review")
