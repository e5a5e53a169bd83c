"""`changegate audit`: verify the hash chain of the append-only audit log; archive a past month."""

from __future__ import annotations

import asyncio
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from changegate.cli import stack
from changegate.cli.stack import DEFAULT_WORKDIR, WorkDir, log_friendly
from rich.console import Console

if TYPE_CHECKING:
    from changegate.core.signing import Verifier

app = typer.Typer(help="The append-only audit log.", no_args_is_help=True)
console = log_friendly(Console(stderr=True, soft_wrap=True))


class Start(StrEnum):
    genesis = "genesis"
    checkpoint = "checkpoint"


def _verifier(workdir: Path) -> Verifier | None:
    """Checks the audit service's checkpoint signatures: from CHANGEGATE_TRUSTED_KEYS (None: unset)."""
    from changegate.core.signing import Verifier

    keys = stack.common(workdir).trusted_keys
    return Verifier(keys) if keys else None


VERIFY_HELP = (
    "Recompute the audit log's hash chain and check its signed checkpoints (with CHANGEGATE_TRUSTED_KEYS); "
    "exit 1 if a row was altered or removed or a checkpoint does not match."
    "\n\nArchived months (changegate audit archive) are detached: verification starts after the last "
    "archived row, whose hash a signed checkpoint names; their exports are checked on their own "
    "(docs/verify_audit.py)."
)


@app.command("verify", help=VERIFY_HELP)
def audit_verify(
    expect_head: Annotated[
        str | None,
        typer.Option(help="SEQ:HASH printed by an earlier verify; catches rows cut from the end"),
    ] = None,
    start: Annotated[
        Start,
        typer.Option(
            "--from",
            help="genesis: recompute every attached row; checkpoint: only rows after the latest signed "
            "checkpoint that matches",
        ),
    ] = Start.genesis,
    workdir: WorkDir = DEFAULT_WORKDIR,
) -> None:
    from changegate.audit.chain import parse_head

    head: tuple[int, str] | None = None
    if expect_head:
        try:
            head = parse_head(expect_head)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--expect-head") from exc
    verifier = _verifier(workdir)

    async def run() -> tuple[list[str], str]:
        from changegate.audit.checkpoints import check_checkpoints
        from changegate.audit.retention import verify_log

        pool = await stack.connect(stack.common(workdir).database_url)
        try:
            problems: list[str] = []
            begin = None
            if verifier is not None:
                marks, good = await check_checkpoints(pool, verifier)
                problems += marks.problems
                console.print(f"{marks.checked} signed checkpoints checked")
                if start is Start.checkpoint and good is not None:
                    begin = (good.seq, good.hash)
            else:
                console.print("[yellow]CHANGEGATE_TRUSTED_KEYS unset: signed checkpoints not checked[/]")
            report, anchor = await verify_log(pool, head, begin)
        finally:
            await pool.close()
        if anchor is not None and report.from_seq == anchor.last_seq:
            console.print(
                f"rows 1..{anchor.last_seq} are archived (up to {anchor.label}, export sha256 "
                f"{anchor.file_sha256}): starting after row {anchor.last_seq}, hash {anchor.last_hash}"
            )
        elif report.from_seq:
            console.print(f"starting after row {report.from_seq} (its signed checkpoint matches)")
        problems += report.problems
        summary = f"{report.rows} rows checked: {'chain intact' if not problems else 'CHAIN BROKEN'}"
        return problems, f"{summary}; head {report.head_seq}:{report.head_hash}"

    problems, summary = asyncio.run(run())
    for p in problems:
        console.print(f"[red]{p}[/]")
    console.print(summary)
    console.print("keep the head outside this database; pass it as --expect-head next time")
    raise typer.Exit(0 if not problems else 1)


ARCHIVE_HELP = (
    "Export a past month of the audit log, verify the export, then detach the month's partition."
    "\n\nThe export (JSONL as GET /v1/audit/export gives it, with the signed checkpoints within it) is "
    "checked by the rules of docs/verify_audit.py: every row's hash and link, no gap, the first row "
    "linking to the last archived row (or genesis), each checkpoint's signature (CHANGEGATE_TRUSTED_KEYS), "
    "and the month's last row named by a signed checkpoint (the audit service signs it once the month "
    "is over)."
    "\n\nThen a manifest is written (seq range, hashes, the file's sha256, that checkpoint) and the "
    "partition is detached into schema audit_archive: nothing is deleted; dropping it is your decision."
    "\n\nMonths go oldest first; the current month is refused; a month archived before is reported, not "
    "redone. Run as the database owner (CHANGEGATE_DATABASE_URL). Exit status 0: archived (or archived "
    "before); 1: refused (the partition stays attached); 2: cannot run."
)


@app.command("archive", help=ARCHIVE_HELP)
def audit_archive(
    month: Annotated[str, typer.Option(help="the month to archive, YYYY-MM (UTC); a past month")],
    out: Annotated[
        Path,
        typer.Option(file_okay=False, help="folder for audit-YYYY-MM.jsonl and audit-YYYY-MM.manifest.json"),
    ],
    workdir: WorkDir = DEFAULT_WORKDIR,
) -> None:
    from changegate.audit.retention import ArchiveRefusedError, archive_month, parse_month
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    try:
        first_day = parse_month(month)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--month") from exc
    verifier = _verifier(workdir)
    if verifier is None:
        console.print(
            "[red]CHANGEGATE_TRUSTED_KEYS is unset: the checkpoints' signatures cannot be checked[/]"
        )
        raise typer.Exit(2)

    async def run() -> None:
        from changegate.audit.retention import ArchiveResult

        pool = await stack.connect(stack.common(workdir).database_url)
        columns = (TextColumn("exporting {task.description}"), BarColumn(), MofNCompleteColumn())
        try:
            with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
                task = bar.add_task(month, total=None)

                def advance(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                result: ArchiveResult = await archive_month(pool, first_day, out, verifier, advance)
        finally:
            await pool.close()
        body = result.manifest_body
        if result.already:
            console.print(
                f"{month} was archived before ({body['archived_at']}): {result.rows} rows, "
                f"file {body['file']} sha256 {body['sha256']}, detached as {result.detached_as}"
            )
            return
        console.print(
            f"[green]{month} archived[/]: {result.rows} rows (seq {body['first_seq']}..{body['last_seq']}), "
            f"verified; {result.export} sha256 {body['sha256']}; manifest {result.manifest}; "
            f"partition detached as {result.detached_as} (drop it when your retention allows)"
        )

    try:
        asyncio.run(run())
    except ArchiveRefusedError as exc:
        console.print(f"[red]not archived: {exc}[/]")
        raise typer.Exit(1) from exc
    except OSError as exc:  # the folder cannot be written: nothing was detached
        console.print(f"[red]not archived: {out}: {exc}[/]")
        raise typer.Exit(2) from exc
