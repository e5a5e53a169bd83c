"""Where a CLI command finds the stack it works on: the environment first (CHANGEGATE_*), then the
state file of a dev stack running from ``--workdir`` (its broker, database and service ports), then
the embedded defaults. So every command works beside `changegate dev up`, whatever ports it took."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import asyncpg
import typer
from changegate.core.settings import ENV_PREFIX, CommonSettings
from rich.console import Console

S = TypeVar("S", bound=CommonSettings)

DEFAULT_WORKDIR = Path(".changegate/dev")
WORKDIR_ENV = f"{ENV_PREFIX}DEV_WORKDIR"
WorkDir = Annotated[
    Path,
    typer.Option(
        envvar=WORKDIR_ENV,
        help="a dev stack's folder: its state file gives broker, database and ports "
        "(CHANGEGATE_* variables win over it)",
    ),
]


def log_friendly(console: Console) -> Console:
    """Outside a terminal (a log file, CI, a pipe) tables keep their full width: no path or URL is
    folded or cut to fit 80 columns."""
    if not console.is_terminal:
        console.width = 10_000
    return console


console = log_friendly(Console(stderr=True, soft_wrap=True))
# Settings a dev stack's state file knows, and the variable that overrides each.
_FROM_STATE = {
    "kafka_bootstrap_servers": "kafka",
    "database_url": "database_url",
    "topic_prefix": "topic_prefix",
}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class StackState:
    """What `changegate dev up` wrote to ``<workdir>/state.json`` while its stack runs."""

    workdir: Path
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def ports(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in (self.values.get("ports") or {}).items()}

    @property
    def running(self) -> bool:
        pid = self.values.get("supervisor_pid")
        return isinstance(pid, int) and _alive(pid)

    @classmethod
    def load(cls, workdir: Path) -> StackState | None:
        """The state of the stack running from ``workdir``; None when none runs there (no state
        file, or one whose supervisor is gone)."""
        path = workdir / "state.json"
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        state = cls(workdir, values if isinstance(values, dict) else {})
        if not state.running:
            console.print(f"[yellow]{path} is left from a dev stack that no longer runs; ignored[/]")
            return None
        return state


def settings(workdir: Path, cls: type[S], **overrides: Any) -> S:
    """``cls`` (CommonSettings or a service's) from the environment, with what the dev stack in
    ``workdir`` knows for every setting the environment leaves unset."""
    state = StackState.load(workdir)
    given: dict[str, Any] = {}
    if state is not None:
        for name, key in _FROM_STATE.items():
            value = state.values.get(key)
            if value and f"{ENV_PREFIX}{name.upper()}" not in os.environ:
                given[name] = value
    return cls(**(given | overrides))  # what the caller gives wins over the stack's


def common(workdir: Path) -> CommonSettings:
    return settings(workdir, CommonSettings)


def service_urls(workdir: Path) -> dict[str, str]:
    """Each service's base URL: the dev stack's ports when one runs from ``workdir``, else the
    embedded defaults."""
    from changegate.cli.devstack import DEFAULT_PORTS, SIMULATOR

    state = StackState.load(workdir)
    ports = (state.ports if state is not None else {}) or DEFAULT_PORTS
    # The broker and the HubSpot simulator are not changegate services (no /metrics, /readyz).
    return {n: f"http://127.0.0.1:{p}" for n, p in ports.items() if n not in ("broker", SIMULATOR)}


async def connect(dsn: str) -> asyncpg.Pool:
    """A small pool on ``dsn``; when nothing answers, exit saying where it looked and how to point
    the command elsewhere (not a traceback)."""
    from changegate.core.db import create_pool

    try:
        return await create_pool(dsn, max_size=1, wait_seconds=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        console.print(
            f"[red]no database at {_without_password(dsn)}: {exc}[/]\n"
            f"start a dev stack (`changegate dev up`, found by its --workdir) or set {ENV_PREFIX}DATABASE_URL"
        )
        raise typer.Exit(2) from exc


def _without_password(dsn: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return dsn
