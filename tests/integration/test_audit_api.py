"""The audit service as a process, on rows appended to its database: filters (422 on unknown or
malformed ones), a record's history, exports that the standalone verifier in docs/ accepts (and
rejects once tampered), signed checkpoints, and a chain rewritten by the database owner caught by
them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from changegate.audit.chain import GENESIS, canonical_hash
from changegate.audit.store import append_decisions, append_executions, record_decisions
from changegate.core.auth import Role
from changegate.core.auth.tokens import create_token
from changegate.core.contracts import AuditCheckpoint, DecisionOutcome, ExecutionStatus, ProposalKind
from changegate.core.serde import decode
from changegate.core.settings import CommonSettings
from helpers import (
    ServiceProcess,
    approved_decision,
    audit_public_key,
    audit_service,
    ended_decision,
    eventually,
    execution_of,
    read_topic,
    rewrite_audit_chain,
    run_audit_verifier,
    verifier,
    viewer_client,
)


@pytest.fixture
def audit(settings: CommonSettings, topics: None, tmp_path: Path) -> Iterator[ServiceProcess]:
    with audit_service(settings, tmp_path, checkpoint_every=5) as svc:
        yield svc


@pytest.fixture
async def client(audit: ServiceProcess, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with viewer_client(pool, audit) as client:
        yield client


async def _fill(pool: asyncpg.Pool) -> None:
    """Nine outcomes over a few records: applied, conflict, failed, noop, rejected, expired."""
    applied = [
        execution_of(
            approved_decision(f"rec-{i}", {"jobtitle": ("Engineer", f"CTO {i}")}), ExecutionStatus.APPLIED
        )
        for i in range(4)
    ]
    others = [
        execution_of(approved_decision("rec-0", {"city": ("Oslo", "Bergen")}), s, error=f"{s.value}: why")
        for s in (ExecutionStatus.CONFLICT, ExecutionStatus.FAILED, ExecutionStatus.NOOP)
    ]
    async with pool.acquire() as conn, conn.transaction():
        await append_executions(conn, applied + others)
        await append_decisions(
            conn,
            [
                ended_decision(DecisionOutcome.REJECTED, "rec-0"),
                ended_decision(DecisionOutcome.EXPIRED, "rec-1"),
            ],
        )


async def test_filters_pages_history_and_unknown_filters(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await _fill(pool)
    everything = (await client.get("/v1/audit/entries", params={"limit": 1000})).json()
    assert len(everything["items"]) == 9
    assert everything["next_after_seq"] is None

    async def seqs(**params: Any) -> list[int]:
        response = await client.get("/v1/audit/entries", params=params)
        assert response.status_code == 200, response.text
        return [e["seq"] for e in response.json()["items"]]

    assert await seqs(record_id="rec-0") == [1, 5, 6, 7, 8]
    assert await seqs(field="city") == [5, 6, 7]
    assert await seqs(mode=["conflict", "noop"]) == [5, 7]
    assert await seqs(mode="rejected", approver="bob@example.com") == [8]
    assert await seqs(approver="alice@example.com", record_id="rec-2") == [3]
    assert await seqs(approver="nobody@example.com") == []
    assert await seqs(source_system="t", object_type="contact", limit=2) == [1, 2]
    assert await seqs(source_system="elsewhere") == []
    assert await seqs(since="2000-01-01T00:00:00Z", until="2100-01-01T00:00:00Z", after_seq=7) == [8, 9]
    assert await seqs(since="2100-01-01T00:00:00Z") == []
    page = (await client.get("/v1/audit/entries", params={"limit": 4})).json()
    assert (len(page["items"]), page["next_after_seq"]) == (4, 4)

    history = (await client.get("/v1/audit/records/contact/rec-0/history")).json()["items"]
    assert [(e["seq"], e["mode"]) for e in history] == [
        (1, "approved"),
        (5, "conflict"),
        (6, "failed"),
        (7, "noop"),
        (8, "rejected"),
    ]
    assert history[1]["reason"] == "conflict: why"

    for params in (
        {"approverr": "alice@example.com"},
        {"mode": "deleted"},
        {"since": "2026-13-01"},
        {"since": "2026-11-01T00:00:00"},  # no time zone: ambiguous
        {"until": "0.5"},  # a number is not a time here (pydantic alone reads it as Unix time)
        {"object_type": "planet"},
        {"after_seq": "-1"},
    ):
        response = await client.get("/v1/audit/entries", params=params)
        assert response.status_code == 422, (params, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    legacy = await client.get("/audit/entries", params={"approver": "alice@example.com"})
    assert legacy.status_code == 422  # once silently ignored: everything came back


async def _export(client: httpx.AsyncClient, path: Path, **params: Any) -> list[dict[str, Any]]:
    async with client.stream("GET", "/v1/audit/export", params=params) as response:
        assert response.status_code == 200
        data = b"".join([chunk async for chunk in response.aiter_bytes()])
    await asyncio.to_thread(path.write_bytes, data)
    return [json.loads(line) for line in data.decode().splitlines()]


async def test_an_export_verifies_standalone_and_tampering_is_caught(
    client: httpx.AsyncClient, pool: asyncpg.Pool, tmp_path: Path, audit: ServiceProcess
) -> None:
    await _fill(pool)
    await eventually(
        lambda: client.get("/v1/audit/checkpoints/latest"),
        lambda r: r.status_code == 200 and r.json()["seq"] == 9,
        what="a checkpoint of the head",
    )
    lines = await _export(client, tmp_path / "audit.jsonl")
    assert [line["seq"] for line in lines[:-1]] == list(range(1, 10))
    assert lines[-1]["checkpoint"]["seq"] == 9
    public_key = audit_public_key()
    result = run_audit_verifier(tmp_path / "audit.jsonl", f"--public-key={public_key}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 9 rows (seq 1..9), 1 checkpoints, 0 problems" in result.stdout

    # One value changed in the file: its row no longer matches its hash.
    tampered = [dict(line) for line in lines]
    tampered[2]["new_value"] = json.dumps("CEO")
    bad = tmp_path / "tampered.jsonl"
    bad.write_text("".join(json.dumps(line) + "\n" for line in tampered))
    result = run_audit_verifier(bad)
    assert result.returncode == 1
    assert "row 3: content does not match its hash (altered)" in result.stdout

    # Rehashed as well: the next row's link breaks. Rehashed all the way: the checkpoint catches it.
    rehashed = [dict(line) for line in lines[:-1]]
    rehashed[2]["new_value"] = json.dumps("CEO")
    prev = GENESIS
    for line in rehashed:
        line["prev_hash"] = prev
        line["hash"] = canonical_hash({k: v for k, v in line.items() if k != "hash"})
        prev = line["hash"]
    bad.write_text("".join(json.dumps(line) + "\n" for line in [*rehashed, lines[-1]]))
    result = run_audit_verifier(bad, f"--public-key={public_key}")
    assert result.returncode == 1
    assert "checkpoint at 9: row 9 does not carry the signed hash (rewritten)" in result.stdout

    # A forged checkpoint over the rewritten chain: its signature fails.
    forged = {**lines[-1]["checkpoint"], "hash": prev}
    bad.write_text("".join(json.dumps(line) + "\n" for line in [*rehashed, {"checkpoint": forged}]))
    result = run_audit_verifier(bad, f"--public-key={public_key}")
    assert (result.returncode, "checkpoint at 9: bad signature" in result.stdout) == (1, True)

    # A filtered export: each row still checks; gaps are expected.
    await _export(client, tmp_path / "rec0.jsonl", record_id="rec-0")
    assert run_audit_verifier(tmp_path / "rec0.jsonl", "--allow-gaps").returncode == 0
    assert "rows 2..4 are missing" in run_audit_verifier(tmp_path / "rec0.jsonl").stdout

    csv = await client.get("/v1/audit/export", params={"format": "csv", "mode": "failed"})
    header, row, *rest = csv.text.splitlines()
    assert header.startswith("seq,hash_version,object_type,record_id")
    assert (row.split(",")[0], rest) == ("6", [])


async def test_a_chain_rewritten_and_recomputed_by_the_owner_fails_its_checkpoints(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: CommonSettings
) -> None:
    await _fill(pool)
    await eventually(
        lambda: client.get("/v1/audit/checkpoints/latest"),
        lambda r: r.status_code == 200 and r.json()["seq"] == 9,
        what="a checkpoint of the head",
    )
    intact = (await client.get("/v1/audit/verify")).json()
    assert (intact["ok"], intact["from_seq"], intact["rows"], intact["checkpoints"]) == (True, 9, 0, 1)
    async with pool.acquire() as conn, conn.transaction():
        more = [execution_of(approved_decision("rec-9", {"city": (None, "Rome")}), ExecutionStatus.APPLIED)]
        await append_executions(conn, more)
    incremental = (await client.get("/v1/audit/verify")).json()
    assert (incremental["ok"], incremental["from_seq"], incremental["rows"]) == (True, 9, 1)

    # The owner disables the triggers, changes row 3 and recomputes every hash after it.
    rows = await pool.fetch("SELECT * FROM audit_entries ORDER BY seq")
    await rewrite_audit_chain(pool, {3: "Chief Everything Officer"})
    for start in ("checkpoint", "genesis"):
        report = (await client.get("/v1/audit/verify", params={"from": start})).json()
        assert not report["ok"]
        assert report["problems"] == ["checkpoint at 9: row 9 no longer carries the signed hash (rewritten)"]
    # The copy published on the topic (outside the database) names the hash as it was signed.
    topic = f"{settings.topic_prefix}audit.checkpoints"
    [record] = await read_topic(settings.kafka_bootstrap_servers, topic, 1)
    published = decode(record.value).payload  # type: ignore[attr-defined]
    assert isinstance(published, AuditCheckpoint)
    assert (published.seq, published.hash) == (9, rows[8]["hash"])
    assert verifier().checkpoint(published) == "audit"


async def test_a_revert_is_refused_for_what_wrote_nothing_and_for_a_merge_with_its_values(
    audit: ServiceProcess, pool: asyncpg.Pool, settings: CommonSettings
) -> None:
    decision = approved_decision("survivor-1", {"city": (None, "Oslo")}, ProposalKind.MERGE, ["loser-1"])
    members = {"survivor-1": {"email": "a@x.example"}, "loser-1": {"email": "a@x.example", "city": "Oslo"}}
    proposal = decision.proposal.model_copy(update={"evidence": {"members": members}})
    decision = decision.model_copy(update={"proposal": proposal})
    async with pool.acquire() as conn, conn.transaction():
        await record_decisions(conn, [decision])
        await append_executions(conn, [execution_of(decision, ExecutionStatus.APPLIED)])
        await append_decisions(conn, [ended_decision(DecisionOutcome.REJECTED, "rec-r")])
    _, token = await create_token(pool, "carol@example.com", Role.REVIEWER, created_by="test")
    _, viewer = await create_token(pool, "vic@example.com", Role.VIEWER, created_by="test")
    async with httpx.AsyncClient(base_url=audit.url, headers={"Authorization": f"Bearer {token}"}) as client:
        merge = await client.post("/v1/audit/entries/1/revert")
        assert merge.status_code == 409
        body = merge.json()
        assert body["detail"].startswith("a merge cannot be reverted")
        assert body["merged_away"] == [{"record_id": "loser-1", "last_known_values": members["loser-1"]}]
        rejected = await client.post("/v1/audit/entries/2/revert", json={"comment": "undo"})
        assert rejected.status_code == 409
        assert (
            rejected.json()["detail"]
            == "entry 2 is rejected: it wrote nothing, so there is nothing to revert"
        )
        assert (await client.post("/v1/audit/entries/3/revert")).status_code == 404
        bad = await client.post("/v1/audit/entries/2/revert", json={"comment": "x", "as": "someone"})
        assert bad.status_code == 422
        as_viewer = await client.post(
            "/v1/audit/entries/2/revert", headers={"Authorization": f"Bearer {viewer}"}
        )
        assert as_viewer.status_code == 403
    # Nothing was proposed: no revert claimed, nothing for review in the outbox.
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM changegate_processed_events WHERE consumer = 'audit-reverts'"
        )
        == 0
    )
    assert (
        await pool.fetchval("SELECT count(*) FROM changegate_outbox WHERE topic LIKE '%proposals.pending'")
        == 0
    )
