"""`changegate status`: each stage's rate, lag, queue, dead letters and breaker, read from the
services' own /metrics and /readyz (two scrapes a few seconds apart give the rates)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Annotated

import httpx
import typer
from changegate.cli import stack
from changegate.cli.stack import DEFAULT_WORKDIR, WorkDir
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

console = stack.log_friendly(Console(soft_wrap=True))
# A sample: metric name, its labels as a sorted tuple, its value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
BREAKER = {0: "closed", 1: "half-open", 2: "open"}


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float | None:
    """The sum of ``name``'s samples whose labels include ``labels``; None when it has none."""
    values = [
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == w for k, w in labels.items())
    ]
    return sum(values) if values else None


def largest(samples: Samples, name: str) -> float | None:
    values = [v for (n, _), v in samples.items() if n == name]
    return max(values) if values else None


@dataclass
class StageStatus:
    service: str
    url: str
    up: bool
    ready: bool = False
    not_ready: list[str] = field(default_factory=list)
    rate_per_second: float | None = None  # messages processed (ingest: events accepted)
    lag: float | None = None
    stalled_seconds: float | None = None  # the longest a partition with lag has gone without progress
    queue: float | None = None  # review-api: proposals pending; others: outbox rows not yet sent
    oldest_pending_seconds: float | None = None
    dead_letters: float | None = None
    breaker: str | None = None
    paused_partitions: float | None = None
    error: str | None = None


def summarise(
    service: str, url: str, before: Samples, after: Samples, seconds: float, ready: tuple[bool, list[str]]
) -> StageStatus:
    """One stage from two scrapes ``seconds`` apart and its /readyz answer."""
    counter = (
        ("changegate_ingest_events_produced_total", {})
        if service == "ingest"
        else ("changegate_messages_consumed_total", {"outcome": "processed"})
    )
    now, then = total(after, counter[0], **counter[1]), total(before, counter[0], **counter[1])
    rate = None
    if now is not None and seconds > 0:
        rate = max(0.0, now - (then or 0.0)) / seconds
    status = StageStatus(service, url, up=True, ready=ready[0], not_ready=ready[1], rate_per_second=rate)
    status.lag = total(after, "changegate_consumer_lag_messages")
    status.dead_letters = total(after, "changegate_dead_letters_total")
    status.paused_partitions = total(after, "changegate_consumer_partition_paused")
    wall = time.time()
    lagging = {ls for (n, ls), v in after.items() if n == "changegate_consumer_lag_messages" and v > 0}
    ages = [
        wall - v
        for (n, ls), v in after.items()
        if n == "changegate_consumer_last_progress_timestamp_seconds" and ls in lagging
    ]
    status.stalled_seconds = max(ages) if ages else None
    if service == "review-api":
        status.queue = total(after, "changegate_review_pending_proposals") or 0.0  # by kind and queue
        status.oldest_pending_seconds = largest(after, "changegate_review_oldest_pending_age_seconds")
    else:
        status.queue = largest(after, "changegate_outbox_pending_messages")
    state = largest(after, "changegate_executor_crm_breaker_state")
    status.breaker = BREAKER.get(int(state)) if state is not None else None
    return status


async def _scrape(client: httpx.AsyncClient, url: str) -> Samples:
    response = await client.get(f"{url}/metrics")
    response.raise_for_status()
    return parse(response.text)


async def _ready(client: httpx.AsyncClient, url: str) -> tuple[bool, list[str]]:
    response = await client.get(f"{url}/readyz")
    if response.status_code == 200:
        return True, []
    try:
        checks = response.json().get("checks", {})
    except ValueError:
        return False, [f"HTTP {response.status_code}"]
    return False, [name for name, ok in checks.items() if not ok]


async def collect(urls: dict[str, str], interval: float) -> list[StageStatus]:
    async with httpx.AsyncClient(timeout=5) as client:

        async def first(url: str) -> Samples | Exception:
            try:
                return await _scrape(client, url)
            except (httpx.HTTPError, ValueError) as exc:
                return exc

        started = time.monotonic()
        before = await asyncio.gather(*(first(u) for u in urls.values()))
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        seconds = time.monotonic() - started
        out = []
        for (service, url), earlier in zip(urls.items(), before, strict=True):
            try:
                after, ready = await asyncio.gather(_scrape(client, url), _ready(client, url))
            except (httpx.HTTPError, ValueError) as exc:
                out.append(StageStatus(service, url, up=False, error=f"{type(exc).__name__}: {exc}"))
                continue
            out.append(
                summarise(service, url, earlier if isinstance(earlier, dict) else {}, after, seconds, ready)
            )
        return out


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}{unit}" if value % 1 else f"{value:,.0f}{unit}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def table(rows: Iterable[StageStatus]) -> Table:
    out = Table(title="changegate status")
    for column in ("stage", "ready", "msg/s", "lag", "stalled", "queue", "dead letters", "breaker"):
        out.add_column(column, overflow="fold")
    for r in rows:
        if not r.up:
            out.add_row(r.service, f"[red]down[/] ({r.url})", "-", "-", "-", "-", "-", "-")
            continue
        ready = "[green]ready[/]" if r.ready else f"[red]not ready[/]: {', '.join(r.not_ready)}"
        queue = _num(r.queue)
        if r.oldest_pending_seconds:
            queue += f" (oldest {_age(r.oldest_pending_seconds)})"
        stalled = _age(r.stalled_seconds) if r.stalled_seconds and r.stalled_seconds > 30 else "-"
        breaker = r.breaker or "-"
        if r.paused_partitions:
            breaker += f", {_num(r.paused_partitions)} partition(s) paused"
        dead = _num(r.dead_letters)
        out.add_row(
            r.service,
            ready,
            _num(r.rate_per_second),
            _num(r.lag),
            f"[red]{stalled}[/]" if stalled != "-" else stalled,
            queue,
            f"[yellow]{dead}[/]" if r.dead_letters else dead,
            f"[red]{breaker}[/]" if r.breaker == "open" else breaker,
        )
    return out


def _urls(workdir: WorkDir, given: list[str] | None) -> dict[str, str]:
    urls = stack.service_urls(workdir)
    for item in given or []:
        name, sep, url = item.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise typer.BadParameter(f"{item!r}: expected NAME=http://host:port", param_hint="--url")
        urls[name] = url.rstrip("/")
    # Flow order: where a change comes from to where it is recorded.
    order = ["ingest", "detector", "policy", "review-api", "executor", "audit"]
    return dict(sorted(urls.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def status_command(
    workdir: WorkDir = DEFAULT_WORKDIR,
    url: Annotated[
        list[str] | None,
        typer.Option(help="NAME=URL of a service to read (repeatable; default: the dev stack's ports)"),
    ] = None,
    interval: Annotated[
        float, typer.Option(min=0.5, help="seconds between the two scrapes a rate needs")
    ] = 2.0,
    watch: Annotated[bool, typer.Option(help="refresh until Ctrl-C")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object, for scripts")] = False,
) -> None:
    """Each stage's rate, lag, how long its most stuck partition has gone without progress, its
    queue (review-api: proposals pending; others: outbox), dead letters and the CRM breaker, from
    the services' /metrics and /readyz. Exit 1 when a stage is down or not ready."""
    urls = _urls(workdir, url)
    if watch:
        with Live(table([]), console=console, auto_refresh=False) as live:
            try:
                while True:
                    live.update(table(asyncio.run(collect(urls, interval))), refresh=True)
            except KeyboardInterrupt:
                return
    rows = asyncio.run(collect(urls, interval))
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        console.print(table(rows))
    if not all(r.up and r.ready for r in rows):
        raise typer.Exit(1)
