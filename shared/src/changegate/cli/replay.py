"""`changegate replay --from TIMESTAMP`: detect again what crm.events carried since then, e.g. after a
new duplicate model or detector version. Prints its plan first; sends only with --execute.

Each event is sent again as a copy marked ``redetect``, under an event id derived from the original
and the run's label: the detector re-examines the record against what it knows now (it does not fold
the old event's values in), and the same replay run twice sends the same ids, which the detector
has claimed already. A proposal that comes out the same as before has the same id (derived from the
source's event id), so what was decided stays decided; only what the new detector sees differently
becomes a new proposal."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

import typer
from changegate.cli import stack
from changegate.cli.stack import DEFAULT_WORKDIR, WorkDir, log_friendly
from changegate.core.contracts import CrmEvent, CrmEventKind
from changegate.core.contracts.envelope import make_envelope
from changegate.core.dlq import HEADER_REPLAYED_FROM, DeadLetter, OperatorError, read_all
from changegate.core.kafka import make_producer, start_with_retry
from changegate.core.serde import decode, encode
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = log_friendly(Console(stderr=True, soft_wrap=True))
SERVICE = "changegate-replay"
# What the detector proposes from; deletions and merges only change what it knows (never replayed:
# a deletion replayed after the record came back would remove it again).
REPLAYED_KINDS = frozenset(CrmEventKind) - {CrmEventKind.RECORD_DELETED, CrmEventKind.RECORD_MERGED}


@dataclass
class Plan:
    topic: str
    since: datetime
    until: datetime | None
    run: str
    read: int = 0
    to_send: list[tuple[DeadLetter, CrmEvent]] = field(default_factory=list)
    by_kind: Counter[str] = field(default_factory=Counter)
    left_out: Counter[str] = field(default_factory=Counter)
    partitions: Counter[int] = field(default_factory=Counter)


def classify(plan: Plan, record: DeadLetter) -> None:
    """Put one record of crm.events in the plan: sent again, or left out with the reason."""
    plan.read += 1
    at = datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
    if at < plan.since or (plan.until is not None and at >= plan.until):
        return
    try:
        event: CrmEvent = decode(record.value, {"crm_event"}).payload
    except Exception:  # what no consumer can read was dead-lettered when it came
        plan.left_out["undecodable"] += 1
        return
    reason = (
        "already a replay"
        if event.redetect
        else "an echo of our own write"
        if event.echo
        else f"{event.kind.value} (changes state only)"
        if event.kind not in REPLAYED_KINDS
        else None
    )
    if reason is not None:
        plan.left_out[reason] += 1
        return
    plan.to_send.append((record, event))
    plan.by_kind[event.kind.value] += 1
    plan.partitions[record.partition] += 1


async def make_plan(settings: CommonSettings, since: datetime, until: datetime | None, run: str) -> Plan:
    topic = TopicNames(settings.topic_prefix)(Topic.CRM_EVENTS)
    plan = Plan(topic, since, until, run)
    with console.status(f"reading {topic}") as status:
        async for record in read_all(settings, topic, wait_seconds=3600):
            classify(plan, record)
            if plan.read % 1000 == 0:
                status.update(f"reading {topic}: {plan.read:,} events, {len(plan.to_send):,} to replay")
    return plan


def copy_of(record: DeadLetter, event: CrmEvent, run: str) -> bytes:
    """The replayed copy: marked redetect, its event id derived from the original's place and the
    run, so a second send of the same run is the same event."""
    envelope = make_envelope(
        event.model_copy(update={"redetect": True}),
        service=SERVICE,
        dedup_key=f"replay|{run}|{record.topic}|{record.partition}|{record.offset}",
    )
    return encode(envelope)


async def execute(settings: CommonSettings, plan: Plan) -> int:
    producer = make_producer(settings, SERVICE)
    await start_with_retry(producer)
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    sent = 0
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("replay", total=len(plan.to_send))
            for record, event in plan.to_send:
                headers = [
                    (HEADER_REPLAYED_FROM, f"{record.topic}/{record.partition}/{record.offset}".encode())
                ]
                await producer.send_and_wait(
                    plan.topic, copy_of(record, event, plan.run), key=record.key, headers=headers
                )
                sent += 1
                progress.advance(task)
    finally:
        await producer.stop()
    return sent


def _when(value: str, option: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(
            f"{value!r}: expected an ISO 8601 time, e.g. 2026-12-01T00:00:00Z", param_hint=option
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _print_plan(plan: Plan) -> None:
    until = plan.until.isoformat() if plan.until else "now"
    table = Table(title=f"replay of {plan.topic} from {plan.since.isoformat()} to {until} (run {plan.run!r})")
    table.add_column("events")
    table.add_column("count", justify="right")
    for kind, count in sorted(plan.by_kind.items()):
        table.add_row(f"replay: {kind}", f"{count:,}")
    for reason, count in sorted(plan.left_out.items()):
        table.add_row(f"left out: {reason}", f"{count:,}")
    table.add_row("read in all", f"{plan.read:,}")
    console.print(table)
    if plan.partitions:
        spread = ", ".join(f"{p}: {n:,}" for p, n in sorted(plan.partitions.items()))
        console.print(f"per partition: {spread}")


def replay_command(
    since: Annotated[
        str,
        typer.Option(
            "--from", help="replay events the broker received from this time (ISO 8601; UTC if no zone)"
        ),
    ],
    until: Annotated[
        str | None, typer.Option("--to", help="and before this time (default: all there is)")
    ] = None,
    run: Annotated[
        str | None,
        typer.Option(
            help="this replay's label (default: the --from time): the same label sends the same "
            "events again, which the detector skips"
        ),
    ] = None,
    execute_: Annotated[
        bool, typer.Option("--execute", help="send them; without it, only the plan is printed")
    ] = False,
    workdir: WorkDir = DEFAULT_WORKDIR,
) -> None:
    """Detect again what crm.events carried from --from on (after a model or detector upgrade): the
    plan first (events per kind, what is left out and why), then, with --execute, each event sent
    again as a redetect copy, with a progress bar. Safe to repeat: decided proposals stay decided."""
    start = _when(since, "--from")
    end = _when(until, "--to") if until else None
    if end is not None and end <= start:
        raise typer.BadParameter("--to must be after --from", param_hint="--to")
    settings = stack.common(workdir)
    try:
        plan = asyncio.run(make_plan(settings, start, end, run or start.isoformat()))
    except OperatorError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    _print_plan(plan)
    if not plan.to_send:
        console.print("nothing to replay")
        return
    if not execute_:
        console.print(f"{len(plan.to_send):,} events would be sent again; add --execute to send them")
        return
    sent = asyncio.run(execute(settings, plan))
    console.print(f"sent {sent:,} events to {plan.topic} for detection (run {plan.run!r})")
