"""`changegate crm import`: load the CRM's existing contacts and companies into the detector.

It reads through the executor's CRM adapter (HubSpot: the list endpoint, 100 a page, by its
``after`` cursor), inside a share of the same client-side rate limit the executor keeps
(``CHANGEGATE_IMPORT_RATE_SHARE`` of ``CHANGEGATE_HUBSPOT_REQUESTS_PER_WINDOW``; the executors are
held to the rest by ``CHANGEGATE_HUBSPOT_RATE_SHARE``), and loads the records into the detector's
state, and through its changelog into every replica's index, without proposing anything
(``detector/backfill.py``). Stopped anywhere, it resumes where it stopped."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from changegate.core.contracts import ObjectType
from changegate.core.topics import TopicNames
from changegate.detector import backfill
from changegate.detector.settings import DetectorSettings
from changegate.executor.crm.port import CrmAdapter, CrmUnavailableError
from changegate.executor.settings import ExecutorSettings
from pydantic import Field
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

app = typer.Typer(help="Your CRM's existing records: load them into the detector.", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)
DEFAULT_WORKDIR = Path(".changegate/dev")


class ImportSettings(ExecutorSettings):
    """The executor's CRM settings (the same adapter, token and rate limit), and the import's own."""

    import_rate_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="share of the CRM client's rate limit the import spends (the executor keeps the rest)",
    )
    import_page_size: int = Field(100, ge=1, le=100, description="records a page (HubSpot lists 100 at most)")


def _from_stack(workdir: Path) -> dict[str, Any]:
    """What a dev stack running from ``workdir`` says (its database, topics and CRM); CHANGEGATE_*
    variables win."""
    state_file = workdir / "state.json"
    if not state_file.is_file():
        return {}
    state = json.loads(state_file.read_text())
    given: dict[str, Any] = {}
    if state.get("database_url") and "CHANGEGATE_DATABASE_URL" not in os.environ:
        given["database_url"] = state["database_url"]
    if state.get("kafka") and "CHANGEGATE_KAFKA_BOOTSTRAP_SERVERS" not in os.environ:
        given["kafka_bootstrap_servers"] = state["kafka"]
    if state.get("topic_prefix") and "CHANGEGATE_TOPIC_PREFIX" not in os.environ:
        given["topic_prefix"] = state["topic_prefix"]
    if state.get("crm") == "hubspot-sim" and "CHANGEGATE_CRM" not in os.environ:
        from changegate.hubspot_sim import TOKEN

        given.update(crm="hubspot", hubspot_base_url=state["crm_url"], hubspot_token=TOKEN)
    elif state.get("crm") in ("sandbox", "hubspot") and "CHANGEGATE_CRM" not in os.environ:
        given["crm"] = state["crm"]
    return given


def _adapter(settings: ImportSettings, pool: Any) -> tuple[CrmAdapter, str]:
    """The executor's adapter, held to the import's share of the rate limit; the checkpoint's
    name of the CRM."""
    from changegate.executor.app import make_crm

    adapter = make_crm(settings.model_copy(update={"hubspot_rate_share": settings.import_rate_share}), pool)
    source = f"hubspot@{settings.hubspot_base_url}" if settings.crm == "hubspot" else settings.crm
    return adapter, source


def record_fields(settings: DetectorSettings, extra: list[str]) -> list[str]:
    return list(dict.fromkeys([*settings.record_properties(), *extra]))


async def _import(
    settings: ImportSettings,
    detector: DetectorSettings,
    object_types: list[ObjectType],
    restart: bool,
    extra: list[str],
    progress: Progress,
) -> list[tuple[ObjectType, backfill.Checkpoint, float, int]]:
    from changegate.core.db import create_pool, migrate, migrate_core

    pool = await create_pool(settings.database_url, max_size=3)
    done = []
    try:
        await migrate_core(pool)
        await migrate(pool, "detector", "changegate.detector.migrations")
        adapter, source = _adapter(settings, pool)
        try:
            for object_type in object_types:
                task = progress.add_task(f"{object_type.value}s", total=None, rate="")
                started, first = time.monotonic(), await backfill.checkpoint(pool, source, object_type)
                resumed = 0 if first is None or first.finished or restart else first.loaded

                def shown(
                    at: backfill.Checkpoint,
                    task: TaskID = task,
                    started: float = started,
                    base: int = resumed,
                ) -> None:
                    rate = (at.loaded - base) / max(time.monotonic() - started, 1e-6)
                    progress.update(task, completed=at.loaded, total=at.total, rate=f"{rate:,.0f} records/s")

                at = await backfill.run(
                    pool,
                    adapter,
                    source,
                    object_type,
                    record_fields(detector, extra),
                    names=TopicNames(settings.topic_prefix),
                    page_size=settings.import_page_size,
                    restart=restart,
                    on_page=shown,
                )
                shown(at)
                done.append((object_type, at, time.monotonic() - started, at.loaded - resumed))
        finally:
            await adapter.close()
    finally:
        await pool.close()
    return done


@app.command("import")
def import_command(
    object_type: Annotated[
        list[ObjectType] | None,
        typer.Option("--object-type", help="contact or company (repeat for both; default: both)"),
    ] = None,
    restart: Annotated[
        bool, typer.Option(help="start over from the first page (default: resume an import that stopped)")
    ] = False,
    rate_share: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            max=1.0,
            help="share of the CRM client's rate limit to spend (default: CHANGEGATE_IMPORT_RATE_SHARE, 0.5)",
        ),
    ] = None,
    properties: Annotated[
        list[str] | None,
        typer.Option("--property", help="a further property to load (repeatable); the detectors' own always"),
    ] = None,
    workdir: Annotated[
        Path, typer.Option(help="a dev stack's folder: its database and CRM (CHANGEGATE_* variables win)")
    ] = DEFAULT_WORKDIR,
) -> None:
    """Load every existing contact and company of the CRM into the detector's state and index, so
    new records are compared with them; nothing is proposed. Reads through the executor's CRM
    adapter and settings (CHANGEGATE_CRM, CHANGEGATE_HUBSPOT_TOKEN, …) within a share of its rate
    limit. A value a webhook brought after the record was last changed in the CRM is kept. Resumes
    where an interrupted import stopped. Then: `changegate detector scan` for the duplicates already
    there, `changegate detector train` to fit the duplicate finder to these records."""
    overrides = _from_stack(workdir)
    if rate_share is not None:
        overrides["import_rate_share"] = rate_share
    settings = ImportSettings(**overrides)
    if settings.crm == "hubspot" and settings.hubspot_token is None:
        console.print(
            "[red]CHANGEGATE_CRM=hubspot needs CHANGEGATE_HUBSPOT_TOKEN (the executor's private app token)[/]"
        )
        raise typer.Exit(2)
    detector = DetectorSettings(database_url=settings.database_url)
    kinds = object_type or [ObjectType.CONTACT, ObjectType.COMPANY]
    where = settings.hubspot_base_url if settings.crm == "hubspot" else "the sandbox CRM"
    limit = (
        f"{settings.import_rate_share:.0%} of {settings.hubspot_requests_per_window} requests"
        f" / {settings.hubspot_window_seconds:g} s"
        if settings.crm == "hubspot"
        else "no rate limit"
    )
    console.print(f"importing from {where} ({limit})")
    columns = (
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=console) as progress:
            done = asyncio.run(_import(settings, detector, kinds, restart, properties or [], progress))
    except KeyboardInterrupt:
        console.print("[yellow]stopped[/]: every page loaded so far is kept; run the same command to resume")
        raise typer.Exit(130) from None
    except backfill.ImportRunningError as exc:
        console.print(f"[red]{exc}[/]: wait for it, or stop it (it resumes later)")
        raise typer.Exit(1) from exc
    except CrmUnavailableError as exc:
        console.print(
            f"[red]the CRM is not answering:[/] {exc}\nevery page loaded so far is kept; run again to resume"
        )
        raise typer.Exit(1) from exc
    table = Table(title="imported")
    for column in ("object type", "records loaded", "this run", "seconds", "records/s"):
        table.add_column(column)
    for kind, at, seconds, this_run in done:
        table.add_row(
            kind.value,
            f"{at.loaded:,}",
            f"{this_run:,}",
            f"{seconds:.1f}",
            f"{this_run / max(seconds, 1e-6):,.0f}",
        )
    console.print(table)
    console.print(
        "next: `changegate detector scan --out duplicates.csv` lists the duplicates already in the CRM "
        "(nothing is proposed without --publish); `changegate detector train --out model.json` fits the "
        "duplicate finder to these records"
    )
