"""`changegate migrate`: apply every component's migrations as the database owner, then create each
service's least-privileged login role and grant it exactly what it needs."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from changegate.cli import stack
from changegate.cli.stack import DEFAULT_WORKDIR, WorkDir, log_friendly
from changegate.core.db import create_pool, migrate
from changegate.core.roles import ensure_roles
from changegate.core.settings import CommonSettings
from pydantic import Field, SecretStr, ValidationError
from rich.console import Console
from rich.table import Table

console = log_friendly(Console(stderr=True, soft_wrap=True))
# component -> migrations package, in the order they apply (core first).
COMPONENTS = {
    "core": "changegate.core.migrations",
    "audit": "changegate.audit.migrations",
    "review-api": "changegate.review_api.migrations",
    "policy": "changegate.policy.migrations",
    "detector": "changegate.detector.migrations",
    "executor": "changegate.executor.migrations",
}


class MigrateSettings(CommonSettings):
    role_passwords: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="service -> password of its role (JSON; also a changegate_role_passwords secret file)",
    )


async def migrate_all(
    settings: CommonSettings, roles: bool, passwords: dict[str, str]
) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        applied = {name: await migrate(pool, name, package) for name, package in COMPONENTS.items()}
        granted: dict[str, list[str]] = {}
        if roles:
            async with pool.acquire() as conn:
                granted = await ensure_roles(conn, passwords)
        return applied, granted
    finally:
        await pool.close()


def migrate_command(
    roles: Annotated[
        bool, typer.Option(help="create or update each service's login role and its grants")
    ] = True,
    workdir: WorkDir = DEFAULT_WORKDIR,
) -> None:
    """Apply the migrations of every component as the owner (CHANGEGATE_DATABASE_URL), then make each
    service's role (changegate_<service>) with only its privileges. Role passwords come from
    CHANGEGATE_ROLE_PASSWORDS, a JSON object service -> password (a role without one keeps its own)."""
    try:
        settings = stack.settings(workdir, MigrateSettings)
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    passwords = {service: secret.get_secret_value() for service, secret in settings.role_passwords.items()}
    applied, granted = asyncio.run(migrate_all(settings, roles, passwords))
    for component, versions in applied.items():
        done = ", ".join(f"{v:04d}" for v in versions) or "up to date"
        console.print(f"  {component}: {done}")
    if granted:
        table = Table(title="service roles")
        table.add_column("role")
        table.add_column("may")
        for role, grants in granted.items():
            table.add_row(role, "\n".join(grants))
        console.print(table)
