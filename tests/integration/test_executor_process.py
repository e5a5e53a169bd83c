"""The executor as its own process against the HubSpot simulator and the real broker: killed between
the CRM call and the ledger write, it neither loses nor repeats the change; a decision HubSpot
refuses is dead-lettered, and `dlq replay` executes it once the cause is gone — replayed again, it
writes nothing more."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from changegate.cli.embedded import free_port
from changegate.core.contracts import (
    Decision,
)
from changegate.core.contracts.envelope import make_envelope
from changegate.core.dlq import read_all, replay
from changegate.core.kafka import make_producer, publish
from changegate.core.serde import decode
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames
from changegate.hubspot_sim import TOKEN, SimServer
from helpers import approved_decision, eventually, read_topic, service_process


def _env(sim: SimServer) -> dict[str, str]:
    return {
        "CHANGEGATE_CRM": "hubspot",
        "CHANGEGATE_HUBSPOT_BASE_URL": sim.url,
        "CHANGEGATE_HUBSPOT_TOKEN": TOKEN,
        "CHANGEGATE_HUBSPOT_ATTEMPTS": "2",
        "CHANGEGATE_HANDLER_MAX_ATTEMPTS": "1",
    }


async def _send(settings: CommonSettings, decision: Decision) -> None:
    producer = make_producer(settings, "test")
    await producer.start()
    try:
        topic = TopicNames(settings.topic_prefix)(Topic.DECISIONS)
        await publish(
            producer, topic, decision.proposal.record_id, make_envelope(decision, service="review-api")
        )
    finally:
        await producer.stop()


async def _executions(settings: CommonSettings, count: int) -> list[Any]:
    topic = TopicNames(settings.topic_prefix)(Topic.EXECUTIONS)
    records = await read_topic(settings.kafka_bootstrap_servers, topic, count, timeout=30)
    return [decode(r.value).payload for r in records]  # type: ignore[attr-defined]


async def test_killed_between_the_crm_write_and_the_ledger_it_neither_loses_nor_repeats(
    settings: CommonSettings, topics: None, hubspot_sim: SimServer, tmp_path: Path
) -> None:
    hubspot_sim.reset()
    hubspot_sim.records({"id": "901", "properties": {"jobtitle": "Engineer"}})
    # HubSpot takes the write, then its answer never comes back before the executor dies.
    hubspot_sim.fault(path="/batch/update", apply_first=True, delay=60)
    decision = approved_decision("901", {"jobtitle": ("Engineer", "CTO")})
    with service_process(
        "changegate.executor", settings, free_port(), tmp_path / "one.log", **_env(hubspot_sim)
    ) as svc:
        await _send(settings, decision)
        await eventually(
            lambda: asyncio.to_thread(hubspot_sim.calls, "/batch/update"),
            lambda c: len(c) == 1,
            what="the write",
        )
        assert (hubspot_sim.record("901") or {})["properties"]["jobtitle"] == "CTO"
        svc.proc.kill()  # SIGKILL: no ledger write, no offset commit
        svc.proc.wait()
    with service_process(
        "changegate.executor", settings, free_port(), tmp_path / "two.log", **_env(hubspot_sim)
    ):
        [execution] = await _executions(settings, 1)
    assert (execution.status.value, execution.attempts) == ("applied", 2)
    assert [(w.overwritten, w.new) for w in execution.writes] == [("Engineer", "CTO")]
    assert len(hubspot_sim.calls("/batch/update")) == 1  # resolved by reading, never written twice
    assert hubspot_sim.log()["violations"] == []


async def test_a_refused_decision_is_dead_lettered_and_replays_once_fixed(
    settings: CommonSettings, topics: None, hubspot_sim: SimServer, tmp_path: Path
) -> None:
    hubspot_sim.reset()
    hubspot_sim.records({"id": "902", "properties": {"jobtitle": "Engineer"}})
    hubspot_sim.fault(path="/batch/update", fail_ids=["902"])  # one 207 validation error
    names = TopicNames(settings.topic_prefix)
    with service_process(
        "changegate.executor", settings, free_port(), tmp_path / "svc.log", **_env(hubspot_sim)
    ):
        await _send(settings, approved_decision("902", {"jobtitle": ("Engineer", "CTO")}))

        async def letters() -> list[Any]:
            return [x async for x in read_all(settings, names.dlq(Topic.DECISIONS))]

        [letter] = await eventually(letters, lambda ls: len(ls) == 1, what="the dead letter")
        assert letter.reason == "crm_refused"
        assert "VALIDATION_ERROR" in letter.error
        assert (hubspot_sim.record("902") or {})["properties"]["jobtitle"] == "Engineer"
        # The cause is gone (the fault was one-off): replay; replay again changes nothing.
        for _ in range(2):
            await replay(settings, [letter], dry_run=False)
        [execution] = await _executions(settings, 1)
        await asyncio.sleep(1)
    assert execution.status.value == "applied"
    assert (hubspot_sim.record("902") or {})["properties"]["jobtitle"] == "CTO"
    updates = hubspot_sim.calls("/batch/update")
    assert len(updates) == 2  # the refused one, then the one write
    assert len(await _executions(settings, 2)) == 1
