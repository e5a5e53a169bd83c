"""review-api with several worker processes on one port (CHANGEGATE_REVIEW_WORKERS), on the real
broker and PostgreSQL: the kernel spreads connections over the processes; a decision taken in any of
them is published once (the primary's outbox relay); /metrics merges every process's series; SIGTERM
stops them all."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import asyncpg
import httpx
from changegate.cli.embedded import free_port
from changegate.core.auth import Role
from changegate.core.auth.tokens import create_token
from changegate.core.contracts import ReviewRequest
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames
from changegate.review_api import queue
from helpers import eventually, read_topic, service_process
from hostile import good_payload

WORKERS = 3
PEOPLE = ["alice@example.com", "bob@example.com", "carol@example.com", "dan@example.com"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def fresh_get(url: str, token: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:  # a connection of its own
        return await client.get(url, headers={"Authorization": f"Bearer {token}"})


async def test_worker_processes_share_the_port_decide_once_and_merge_metrics(
    settings: CommonSettings, topics: None, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    env = {"CHANGEGATE_REVIEW_WORKERS": str(WORKERS), "CHANGEGATE_REVIEW_DECISION_RATE_LIMIT": "10000/minute"}
    port = free_port()
    with service_process("changegate.review_api", settings, port, tmp_path / "review.log", **env) as svc:
        tokens = {}
        for name in PEOPLE:
            _, tokens[name] = await create_token(pool, name, Role.REVIEWER, created_by="test")
        base = f"http://127.0.0.1:{port}"

        async def scraped() -> str:
            async with httpx.AsyncClient(timeout=30) as client:
                return (await client.get(f"{base}/metrics")).text

        # Every worker process reports itself, in the one /metrics.
        def pids(text: str) -> set[int]:
            return {int(p) for p in re.findall(r'changegate_build_info\{[^}]*pid="(\d+)"', text)}

        text = await eventually(scraped, lambda t: len(pids(t)) == WORKERS, what="every worker in /metrics")
        workers = pids(text)

        # Requests over their own connections, spread by the kernel: all answered, all counted once.
        answers = await asyncio.gather(
            *(fresh_get(f"{base}/v1/proposals", tokens["alice@example.com"]) for _ in range(30))
        )
        assert [a.status_code for a in answers] == [200] * 30
        counted = re.search(
            r'changegate_http_request_duration_seconds_count\{[^}]*method="GET",route="/v1/proposals",'
            r'status="200"\} (\S+)',
            await scraped(),
        )
        assert counted is not None
        assert float(counted[1]) == 30

        # Of concurrent approvals over separate connections (so in different processes), one
        # decides; the decision written there is published once, by the primary's relay.
        request = good_payload("review_request")
        assert isinstance(request, ReviewRequest)
        await queue.enqueue(pool, request)
        pid = request.proposal.proposal_id

        async def approve(who: str) -> int:
            async with httpx.AsyncClient(timeout=30) as client:
                response = await client.post(
                    f"{base}/v1/proposals/{pid}/approve", headers={"Authorization": f"Bearer {tokens[who]}"}
                )
                return response.status_code

        statuses = sorted(await asyncio.gather(*(approve(who) for who in PEOPLE * 4)))
        assert statuses == [200] + [409] * (len(PEOPLE) * 4 - 1)
        names = TopicNames(settings.topic_prefix)
        assert len(await read_topic(settings.kafka_bootstrap_servers, names(Topic.DECISIONS), 1)) == 1
        await eventually(
            lambda: pool.fetchval("SELECT count(*) FROM changegate_outbox"),
            lambda n: n == 0,
            what="outbox drained",
        )
        supervisor = svc.proc.pid
    # SIGTERM to the supervisor stopped every worker.
    assert not alive(supervisor)
    assert not any(alive(p) for p in workers)
