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


def _metric(url: str, name: str, **labels: str) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


async def test_a_crm_outage_longer_than_max_poll_interval_pauses_partitions_and_keeps_the_group(
    settings: CommonSettings, topics: None, hubspot_sim: SimServer, tmp_path: Path
) -> None:
    """HubSpot answers 503 for 8 s while max_poll_interval is 2 s: the executor pauses the decisions'
    partitions and keeps polling instead of waiting in the handler, so it never leaves its group (one
    assignment, no rebalance); when the breaker's probe succeeds it resumes, and every decision is
    applied exactly once."""
    hubspot_sim.reset()
    ids = [str(n) for n in range(960, 966)]
    hubspot_sim.records(*({"id": i, "properties": {"jobtitle": "Engineer"}} for i in ids))
    env = {
        **_env(hubspot_sim),
        "CHANGEGATE_KAFKA_MAX_POLL_INTERVAL_MS": "2000",
        "CHANGEGATE_HUBSPOT_ATTEMPTS": "1",
        "CHANGEGATE_HUBSPOT_TIMEOUT_SECONDS": "0.5",
        "CHANGEGATE_BREAKER_FAILURES": "1",
        "CHANGEGATE_BREAKER_COOLDOWN_SECONDS": "0.5",
    }
    outage = 8.0
    with service_process(
        "changegate.executor", settings, free_port(), tmp_path / "executor.log", **env
    ) as svc:
        assert _metric(svc.url, "changegate_consumer_rebalances_total", group="changegate-executor") == 1
        hubspot_sim.fault(status=503, seconds=outage)
        started = asyncio.get_running_loop().time()
        for record_id in ids:
            await _send(settings, approved_decision(record_id, {"jobtitle": ("Engineer", "CTO")}))
        executions = await _executions(settings, len(ids))
        assert asyncio.get_running_loop().time() - started >= outage  # it did outlast the interval
        # Still the first assignment: never dropped from the group, no rebalance storm.
        assert _metric(svc.url, "changegate_consumer_rebalances_total", group="changegate-executor") == 1
        assert (
            _metric(svc.url, "changegate_consumer_backpressure_pauses_total", reason="crm_unavailable") >= 1
        )
        assert _metric(svc.url, "changegate_consumer_partition_paused") == 0
        log = svc.log.read_text()
    assert sorted(e.decision.proposal.record_id for e in executions) == ids  # nothing lost, once each
    assert {e.status.value for e in executions} == {"applied"}
    for record_id in ids:
        assert (hubspot_sim.record(record_id) or {})["properties"]["jobtitle"] == "CTO"
    writes = [
        c
        for c in hubspot_sim.calls("/batch/update")
        if c.get("status") is None and any(i["id"] in ids for i in c["body"]["inputs"])
    ]
    written = sorted(i["id"] for c in writes for i in c["body"]["inputs"])
    assert written == ids, "each record written once, none twice"
    assert "backpressure: partitions paused" in log
