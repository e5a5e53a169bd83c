"""`changegate audit`: verify the hash chain of the append-only audit log."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from changegate.cli import stack
from changegate.cli.stack import DEFAULT_WORKDIR, WorkDir, log_friendly
from rich.console import Console

app = typer.Typer(help="The append-only audit log.", no_args_is_help=True)
console = log_friendly(Console(stderr=True, soft_wrap=True))


@app.command("verify")
def audit_verify(
    expect_head: Annotated[
        str | None,
        typer.Option(help="SEQ:HASH printed by an earlier verify; catches rows cut from the end"),
    ] = None,
    workdir: WorkDir = DEFAULT_WORKDIR,
) -> None:
    """Recompute the audit log's hash chain; exit 1 if a row was altered or removed."""
    from changegate.audit.chain import parse_head

    head: tuple[int, str] | None = None
    if expect_head:
        try:
            head = parse_head(expect_head)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--expect-head") from exc

    async def run() -> tuple[bool, int, list[str], str]:
        from changegate.audit.chain import verify

        pool = await stack.connect(stack.common(workdir).database_url)
        try:
            report = await verify(pool, head)
        finally:
            await pool.close()
        return report.ok, report.rows, report.problems, f"{report.head_seq}:{report.head_hash}"

    ok, rows, problems, head_now = asyncio.run(run())
    for p in problems:
        console.print(f"[red]{p}[/]")
    console.print(f"{rows} rows checked: {'chain intact' if ok else 'CHAIN BROKEN'}; head {head_now}")
    console.print("keep the head outside this database; pass it as --expect-head next time")
    raise typer.Exit(0 if ok else 1)
