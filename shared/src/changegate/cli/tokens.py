"""`changegate tokens create|list|revoke`: API tokens for automation and small teams. The database
is CHANGEGATE_DATABASE_URL or, beside `changegate dev up`, its state file's (`--workdir`): an owner or
admin role (the services' roles cannot write tokens)."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from changegate.cli import stack
from changegate.cli.stack import DEFAULT_WORKDIR, WorkDir, log_friendly
from changegate.core.auth.principal import Role
from changegate.core.auth.tokens import TokenInfo, create_token, list_tokens, parse_duration, revoke_token
from changegate.core.db import migrate_core
from rich.console import Console
from rich.table import Table

T = TypeVar("T")
app = typer.Typer(help="API tokens: create (shown once), list, revoke.", no_args_is_help=True)
console = log_friendly(Console(stderr=True, soft_wrap=True))


def _with_db(workdir: Path, work: Callable[..., Awaitable[T]]) -> T:
    async def run() -> T:
        pool = await stack.connect(stack.common(workdir).database_url)
        try:
            await migrate_core(pool)
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(run())


@app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="who or what uses it; recorded as the identity on its decisions")],
    role: Annotated[Role, typer.Option(help="viewer: read; reviewer: decide; admin: everything")],
    expires: Annotated[str | None, typer.Option(help="lifetime, e.g. 12h, 90d, 2w (default: none)")] = "90d",
    queue: Annotated[list[str] | None, typer.Option(help="only this review queue (repeatable)")] = None,
    kind: Annotated[list[str] | None, typer.Option(help="only this proposal kind (repeatable)")] = None,
    workdir: WorkDir = DEFAULT_WORKDIR,
) -> None:
    """Create a token and print it once: only a hash of it is kept."""
    try:
        lifetime = parse_duration(expires) if expires and expires != "never" else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--expires") from exc
    token_id, token = _with_db(
        workdir,
        lambda pool: create_token(
            pool, name, role, created_by=getpass.getuser(), expires_in=lifetime, queues=queue, kinds=kind
        ),
    )
    console.print(f"token {token_id} for {name} ({role.value}); copy it now, it is not shown again:")
    typer.echo(token)


@app.command("list")
def tokens_list(workdir: WorkDir = DEFAULT_WORKDIR) -> None:
    """Every token (never the token itself): role, scopes, expiry, last use, revocation."""
    tokens: list[TokenInfo] = _with_db(workdir, list_tokens)
    table = Table(title="API tokens")
    for column in ("id", "name", "role", "scopes", "created", "expires", "last used", "revoked"):
        table.add_column(column)
    for t in tokens:
        scopes = ", ".join([f"queue {q}" for q in t.queues or []] + [f"kind {k}" for k in t.kinds or []])
        table.add_row(
            t.id,
            t.name,
            t.role.value,
            scopes or "all",
            f"{t.created_at:%Y-%m-%d} by {t.created_by}",
            f"{t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "never",
            f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "-",
            f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "",
        )
    console.print(table)


@app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="the id `tokens list` shows")],
    workdir: WorkDir = DEFAULT_WORKDIR,
) -> None:
    """Revoke a token at once (its next request gets a 401)."""
    if not _with_db(workdir, lambda pool: revoke_token(pool, token_id)):
        console.print(f"[red]no live token {token_id}[/]")
        raise typer.Exit(1)
    console.print(f"revoked {token_id}")
