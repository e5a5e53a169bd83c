"""What an SRE reads off a running stack: every service's /metrics after load, linted for
Prometheus' conventions (names, types, units, labels; `promtool check metrics` where available), the
documented metrics (docs/operations.md) there with their types and sane values, lag per partition
for every consumer group including the detector's, and /healthz live."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from changegate.cli.devstack import DevStack
from changegate.cli.main import _demo_stream
from helpers import eventually
from ops_tools import prometheus_tool
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "detector", "policy", "review-api", "executor", "audit")
GROUPS = {
    "detector": {"changegate-detector", "changegate-detector-lifecycle"},
    "policy": {"changegate-policy"},
    "review-api": {"changegate-review-api"},
    "executor": {"changegate-executor"},
    "audit": {"changegate-audit"},
}
# Units a name may end with (base units only: seconds, not milliseconds).
UNIT_WORDS = ("seconds", "bytes", "messages", "proposals", "records", "postings", "rows", "problems", "ratio")
BAD_UNITS = re.compile(r"_(milliseconds|ms|microseconds|minutes|hours|kilobytes|megabytes|percent)(_|$)")
# Labels that would carry a record, a person or a raw path: unbounded, and personal.
FORBIDDEN_LABELS = {
    "record_id",
    "email",
    "proposal_id",
    "decision_id",
    "event_id",
    "path",
    "url",
    "identity",
    "user",
}


def documented() -> dict[str, tuple[str, list[str]]]:
    """docs/operations.md's table: exposed name -> (type, the services that serve it)."""
    text = (REPO_ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(changegate_\w+)` \| (\w+) \| [^|]* \| ([^|]+) \|", text, flags=re.MULTILINE)
    assert len(rows) > 40, "docs/operations.md lists the metrics"
    return {
        name: (kind, list(SERVICES) if where.strip() == "all" else [w.strip() for w in where.split(",")])
        for name, kind, where in rows
    }


def family_name(exposed: str, kind: str) -> str:
    return {"counter": exposed.removesuffix("_total"), "info": exposed.removesuffix("_info")}.get(
        kind, exposed
    )


async def scrape(url: str) -> tuple[str, dict[str, Metric]]:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{url}/metrics")).text
    return text, {m.name: m for m in text_string_to_metric_families(text)}


def samples(families: dict[str, Metric], name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for m in families.values() for s in m.samples if s.name == name]


@pytest.fixture(scope="module")
def loaded(stack: DevStack) -> dict[str, tuple[str, dict[str, Metric]]]:
    """Ten demo steps through ingest, drained through every stage; then every service's scrape."""

    async def run() -> dict[str, tuple[str, dict[str, Metric]]]:
        sent = await _demo_stream(
            stack.settings(), 10, 0, seed=23, run="e2eops", ingest=stack.ingest_target()
        )
        assert sent == 10
        urls = {name: f"http://127.0.0.1:{stack.ports[name]}" for name in SERVICES}

        async def drained() -> dict[str, tuple[str, dict[str, Metric]]]:
            return {name: await scrape(url) for name, url in urls.items()}

        def settled(scraped: dict[str, tuple[str, dict[str, Metric]]]) -> bool:
            audit = scraped["audit"][1]
            rows = sum(v for _, v in samples(audit, "changegate_audit_rows_written_total"))
            lags = [
                v
                for _, (_, fams) in scraped.items()
                for _, v in samples(fams, "changegate_consumer_lag_messages")
            ]
            # review-api reads its queue's depth from the database every few seconds
            pending = sum(
                v for _, v in samples(scraped["review-api"][1], "changegate_review_pending_proposals")
            )
            return rows >= 3 and pending >= 1 and bool(lags) and all(v == 0 for v in lags)

        return await eventually(drained, settled, timeout=90, what="the load drained to the audit log")

    return asyncio.run(run())


def test_every_service_follows_the_metric_conventions(
    loaded: dict[str, tuple[str, dict[str, Metric]]],
) -> None:
    problems = []
    for service, (_, families) in loaded.items():
        for name, family in families.items():
            if not name.startswith("changegate_"):
                continue
            where = f"{service}: {name}"
            if not re.fullmatch(r"changegate_[a-z0-9_]+", name):
                problems.append(f"{where}: not snake_case")
            if BAD_UNITS.search(name):
                problems.append(f"{where}: not a base unit")
            if family.type == "counter" and any(
                s.name.endswith("_total") is False and not s.name.endswith("_created") for s in family.samples
            ):
                problems.append(f"{where}: a counter sample without _total")
            if family.type != "counter" and name.endswith("_total"):
                problems.append(f"{where}: _total on a {family.type}")
            if family.type == "gauge" and name.endswith("_count"):
                problems.append(f"{where}: _count on a gauge")
            if not family.documentation:
                problems.append(f"{where}: no HELP")
            for s in family.samples:
                bad = FORBIDDEN_LABELS & set(s.labels)
                if bad:
                    problems.append(f"{where}: label {sorted(bad)}")
            if family.type == "histogram":
                by_series: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}
                for s in family.samples:
                    key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                    if s.name.endswith("_bucket"):
                        by_series.setdefault(key, {})[s.labels["le"]] = s.value
                    elif s.name.endswith("_count"):
                        by_series.setdefault(key, {})["count"] = s.value
                for key, values in by_series.items():
                    if values.get("+Inf") != values.get("count"):
                        problems.append(f"{where}{dict(key)}: +Inf bucket is not the count")
    assert not problems, "\n".join(problems)


def test_promtool_lints_every_service_s_metrics(loaded: dict[str, tuple[str, dict[str, Metric]]]) -> None:
    promtool = prometheus_tool("promtool")
    for service, (text, _) in loaded.items():
        ours = "\n".join(
            block for block in re.split(r"(?m)^(?=# HELP )", text) if block.startswith("# HELP changegate_")
        )
        result = subprocess.run(
            [str(promtool), "check", "metrics"], input=ours, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"{service}: {result.stdout}{result.stderr}"


def test_the_documented_metrics_are_served_with_their_types(
    loaded: dict[str, tuple[str, dict[str, Metric]]],
) -> None:
    problems = []
    for exposed, (kind, services) in documented().items():
        for service in services:
            family = loaded[service][1].get(family_name(exposed, kind))
            if family is None:
                problems.append(f"{service} does not serve {exposed}")
            elif family.type != kind:
                problems.append(f"{service}: {exposed} is a {family.type}, documented as a {kind}")
    served = {
        name
        for _, families in loaded.values()
        for name, family in families.items()
        if name.startswith("changegate_") and not name.endswith("_created")  # counters' creation times
    }
    listed = {family_name(n, k) for n, (k, _) in documented().items()}
    problems += [f"{name} is served but not in docs/operations.md" for name in sorted(served - listed)]
    assert not problems, "\n".join(problems)


def test_the_metrics_hold_sane_values_after_load(loaded: dict[str, tuple[str, dict[str, Metric]]]) -> None:
    now = time.time()
    for service in SERVICES:
        families = loaded[service][1]
        [(labels, value)] = samples(families, "changegate_build_info")
        assert (labels["service"], value) == (service, 1)
        for group in GROUPS.get(service, set()):
            lags = [
                (ls, v)
                for ls, v in samples(families, "changegate_consumer_lag_messages")
                if ls["group"] == group
            ]
            assert lags, f"{service}: no lag for {group}"
            assert all(v == 0 for _, v in lags), lags  # drained, and never negative
            progress = [
                v
                for ls, v in samples(families, "changegate_consumer_last_progress_timestamp_seconds")
                if ls["group"] == group
            ]
            assert progress
            assert all(now - 600 < v <= now + 5 for v in progress)
            [(_, polled)] = [
                (ls, v)
                for ls, v in samples(families, "changegate_consumer_last_poll_timestamp_seconds")
                if ls["group"] == group
            ]
            assert now - 30 < polled <= now + 5
            assert (
                sum(
                    v
                    for ls, v in samples(families, "changegate_consumer_rebalances_total")
                    if ls["group"] == group
                )
                >= 1
            )
    # The detector's main consumer reports lag for every partition of crm.events.
    detector = loaded["detector"][1]
    partitions = {
        ls["partition"]
        for ls, _ in samples(detector, "changegate_consumer_lag_messages")
        if ls["group"] == "changegate-detector"
    }
    assert partitions == {"0", "1", "2"}
    policy = loaded["policy"][1]
    routes = {ls["route"] for ls, v in samples(policy, "changegate_policy_decisions_total") if v > 0}
    assert {"auto_apply", "review"} <= routes
    executor = loaded["executor"][1]
    assert (
        sum(v for ls, v in samples(executor, "changegate_executions_total") if ls["status"] == "applied") >= 3
    )
    # Decisions polled together share one sandbox call (write_many, compare-and-set inside it), so
    # three applied changes may have taken a single request.
    assert (
        sum(
            v
            for ls, v in samples(executor, "changegate_crm_requests_total")
            if ls["target"] == "sandbox" and ls["status"] == "ok"
        )
        >= 1
    )
    assert [v for _, v in samples(executor, "changegate_executor_crm_breaker_state")] == [0]
    audit = loaded["audit"][1]
    [(_, count)] = [
        (ls, v)
        for ls, v in samples(audit, "changegate_event_age_seconds_count")
        if ls["mode"] == "auto_applied"
    ]
    [(_, total)] = [
        (ls, v)
        for ls, v in samples(audit, "changegate_event_age_seconds_sum")
        if ls["mode"] == "auto_applied"
    ]
    assert count >= 3
    assert 0 < total / count < 60, "auto-applied changes reach the audit log within the SLO here"
    assert [v for _, v in samples(audit, "changegate_audit_chain_problems")] == [0]
    review = loaded["review-api"][1]
    assert sum(v for _, v in samples(review, "changegate_review_pending_proposals")) >= 1
    ingest = loaded["ingest"][1]
    assert sum(v for _, v in samples(ingest, "changegate_ingest_events_produced_total")) >= 10


def test_every_service_is_live_and_ready(stack: DevStack, loaded: dict[str, Any]) -> None:
    with httpx.Client(timeout=5) as client:
        for service in SERVICES:
            base = f"http://127.0.0.1:{stack.ports[service]}"
            assert client.get(f"{base}/healthz").json() == {"status": "ok"}
            ready = client.get(f"{base}/readyz").json()
            assert ready["checks"]["broker"] is True, (service, ready)
            if service != "ingest":
                assert ready["checks"]["database"] is True, (service, ready)
