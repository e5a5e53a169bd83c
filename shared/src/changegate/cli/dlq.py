"""`changegate dlq …` and `changegate consumer skip`: see, replay and get past dead letters.

Broker and topic prefix come from the CHANGEGATE_* environment or, beside `changegate dev up`, from
its state file (`--workdir`), like every other command."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from changegate.cli import stack
from changegate.cli.stack import DEFAULT_WORKDIR, WorkDir
from changegate.core.dlq import DeadLetter, OperatorError, dlq_name, dlq_topics, read_all, replay, skip
from changegate.core.settings import CommonSettings
from rich.console import Console
from rich.table import Table

T = TypeVar("T")

dlq_app = typer.Typer(
    help="Dead-letter topics: what was refused, why, and replaying it once the cause is fixed.",
    no_args_is_help=True,
)
consumer_app = typer.Typer(help="Consumer groups.", no_args_is_help=True)
console = stack.log_friendly(Console(stderr=True, soft_wrap=True))
out = stack.log_friendly(Console(soft_wrap=True))

TopicArg = Annotated[
    str, typer.Argument(help="a topic (decisions, crm.events, …) or its dead-letter topic's full name")
]
ReasonOpt = Annotated[str | None, typer.Option(help="only dead letters with this reason")]
GroupOpt = Annotated[str | None, typer.Option(help="only those this consumer group dead-lettered")]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except OperatorError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc


async def _letters(
    settings: CommonSettings,
    topic: str,
    reason: str | None = None,
    group: str | None = None,
    at: list[tuple[int, int]] | None = None,
) -> list[DeadLetter]:
    with console.status(f"reading {topic}") as status:
        count = 0

        def progress(n: int) -> None:
            nonlocal count
            count += n
            status.update(f"reading {topic}: {count} dead letters")

        letters = [letter async for letter in read_all(settings, topic, progress=progress)]
    return [
        letter
        for letter in letters
        if (reason is None or letter.reason == reason)
        and (group is None or letter.group == group)
        and (not at or (letter.partition, letter.offset) in at)
    ]


def _at(values: list[str] | None) -> list[tuple[int, int]]:
    parsed = []
    for value in values or []:
        part, _, offset = value.partition(":")
        if not (part.isdigit() and offset.isdigit()):
            raise typer.BadParameter(f"{value!r}: expected PARTITION:OFFSET", param_hint="--at")
        parsed.append((int(part), int(offset)))
    return parsed


@dlq_app.command("list")
def dlq_list(workdir: WorkDir = DEFAULT_WORKDIR) -> None:
    """Each dead-letter topic with its count of dead letters, by reason."""
    settings = stack.common(workdir)

    async def run() -> list[tuple[str, Counter[str]]]:
        rows = []
        for topic in await dlq_topics(settings):
            rows.append((topic, Counter(letter.reason for letter in await _letters(settings, topic))))
        return rows

    table = Table(title="dead-letter topics")
    for column in ("topic", "dead letters", "by reason"):
        table.add_column(column)
    for topic, reasons in _run(run()):
        by_reason = ", ".join(f"{r} {n}" for r, n in reasons.most_common())
        table.add_row(topic, str(sum(reasons.values())), by_reason or "-")
    out.print(table)


@dlq_app.command("show")
def dlq_show(
    topic: TopicArg,
    reason: ReasonOpt = None,
    group: GroupOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many, newest last")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line, body included")] = False,
    workdir: WorkDir = DEFAULT_WORKDIR,
) -> None:
    """The dead letters of TOPIC: where each came from, the reason, the error and the body."""
    settings = stack.common(workdir)
    name = _name(settings, topic)
    letters = _run(_letters(settings, name, reason, group))[-limit:]
    if as_json:
        for letter in letters:
            typer.echo(json.dumps(_as_dict(letter)))
        return
    table = Table(title=f"{name}: {len(letters)} shown")
    for column in ("at", "when", "source", "group", "reason", "error", "body"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        source = letter.source
        table.add_row(
            f"{letter.partition}:{letter.offset}",
            datetime.fromtimestamp(letter.timestamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            f"{source[0]}/{source[1]}/{source[2]}" if source else "(outbox)",
            letter.group or "-",
            letter.reason,
            letter.error[:200],
            _preview(letter),
        )
    out.print(table)


@dlq_app.command("replay")
def dlq_replay(
    topic: TopicArg,
    at: Annotated[
        list[str] | None, typer.Option(help="only the dead letter at PARTITION:OFFSET (repeatable)")
    ] = None,
    reason: ReasonOpt = None,
    group: GroupOpt = None,
    dry_run: Annotated[bool, typer.Option(help="say what would be replayed, send nothing")] = False,
    workdir: WorkDir = DEFAULT_WORKDIR,
) -> None:
    """Send dead letters of TOPIC back to their source topic, once the cause is fixed. Each source
    message is replayed once; consumers deduplicate on event ids, so what was processed before
    changes nothing (an executed decision never executes twice)."""
    settings = stack.common(workdir)
    name = _name(settings, topic)
    wanted = _at(at)
    letters = _run(_letters(settings, name, reason, group, wanted))
    if not letters:
        console.print("no dead letter matches")
        raise typer.Exit(1)
    results = _run(replay(settings, letters, dry_run))
    table = Table(title=f"{'would replay' if dry_run else 'replayed'} from {name}")
    for column in ("at", "to", "reason", "sent"):
        table.add_column(column)
    for r in results:
        sent = "yes" if r.sent else f"no: {r.why_not}"
        table.add_row(f"{r.letter.partition}:{r.letter.offset}", r.letter.target_topic, r.letter.reason, sent)
    out.print(table)
    console.print(f"{sum(r.sent for r in results)} sent, {sum(not r.sent for r in results)} not sent")


@consumer_app.command("skip")
def consumer_skip(
    group: Annotated[str, typer.Option(help="the consumer group, e.g. changegate-executor")],
    topic: Annotated[str, typer.Option(help="the full topic name, e.g. changegate.decisions")],
    partition: Annotated[int, typer.Option(min=0)],
    offset: Annotated[int, typer.Option(min=0, help="the message to get past")],
    timeout: Annotated[float, typer.Option(help="seconds to wait to be given the partition")] = 60,
    force: Annotated[
        bool, typer.Option(help="commit even if the group would also skip messages before OFFSET")
    ] = False,
    workdir: WorkDir = DEFAULT_WORKDIR,
) -> None:
    """Move GROUP past one message: copy it to the dead-letter topic (reason skipped_by_operator),
    then commit OFFSET+1. Stop the group's service first; it resumes after the message."""
    settings = stack.common(workdir)
    done = _run(
        skip(
            settings,
            group,
            topic,
            partition,
            offset,
            wait_seconds=timeout,
            force=force,
            report=lambda s: console.print(f"  {s}"),
        )
    )
    console.print(
        f"group {done.group} now resumes at {done.topic}/{done.partition}/{done.offset + 1} "
        f"(was {done.committed_before}); the message is in {done.dead_letter}"
    )


def _name(settings: CommonSettings, topic: str) -> str:
    try:
        return dlq_name(settings, topic)
    except OperatorError as exc:
        raise typer.BadParameter(str(exc), param_hint="TOPIC") from exc


def _preview(letter: DeadLetter, size: int = 120) -> str:
    body = letter.value[:size].decode("utf-8", "replace")
    more = len(letter.value) - size
    return body + (f"… (+{more} bytes)" if more > 0 else "") + (" [truncated]" if letter.truncated else "")


def _as_dict(letter: DeadLetter) -> dict[str, Any]:
    source = letter.source
    return {
        "dlq": {"topic": letter.topic, "partition": letter.partition, "offset": letter.offset},
        "timestamp_ms": letter.timestamp_ms,
        "source": {"topic": source[0], "partition": source[1], "offset": source[2]} if source else None,
        "group": letter.group or None,
        "reason": letter.reason,
        "error": letter.error,
        "truncated": letter.truncated,
        "key": letter.key.decode("utf-8", "replace") if letter.key is not None else None,
        "body": letter.value.decode("utf-8", "replace"),
    }
