"""`changegate`: run the embedded dev stack, feed it a demo stream, export schemas, verify audit."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from changegate.core.settings import CommonSettings
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="changegate: approval-first CRM automation.", no_args_is_help=True)
dev = typer.Typer(
    help="The embedded dev stack: Tansu broker, PostgreSQL, every service.", no_args_is_help=True
)
demo_app = typer.Typer(help="Synthetic CRM events for demos.", no_args_is_help=True)
schemas_app = typer.Typer(
    help="JSON Schemas and the AsyncAPI document, from the models.", no_args_is_help=True
)
app.add_typer(dev, name="dev")
app.add_typer(demo_app, name="demo")
app.add_typer(schemas_app, name="schemas")

# Each service that has commands brings them along; an install without it just lacks them.
with contextlib.suppress(ImportError):
    from changegate.policy.cli import app as policy_app

    app.add_typer(policy_app, name="policy")
with contextlib.suppress(ImportError):
    from changegate.audit.cli import app as audit_app

    app.add_typer(audit_app, name="audit")
with contextlib.suppress(ImportError):
    from changegate.detector.cli import app as detector_app

    app.add_typer(detector_app, name="detector")
console = Console(stderr=True, soft_wrap=True)

WorkDir = Annotated[Path, typer.Option(help="where the stack keeps data, logs and its state file")]
DEFAULT_WORKDIR = Path(".changegate/dev")


@dev.command("up")
def dev_up(
    demo: Annotated[bool, typer.Option(help="feed a synthetic CRM event stream")] = False,
    demo_interval: Annotated[float, typer.Option(help="seconds between demo contacts")] = 3.0,
    workdir: WorkDir = DEFAULT_WORKDIR,
    kafka: Annotated[
        str | None, typer.Option(help="use this Kafka (host:port) instead of the embedded broker")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="use this PostgreSQL (DSN) instead of the embedded one")
    ] = None,
    base_port: Annotated[
        int | None,
        typer.Option(help="broker on this port, services on the next five (default 19092, 8000-8004)"),
    ] = None,
) -> None:
    """Start the broker, PostgreSQL and every service on loopback; Ctrl-C stops them all."""
    from changegate.cli.devstack import DEFAULT_PORTS, DevStack

    if (workdir / "state.json").exists():
        console.print(f"[yellow]a stack may already run from {workdir}; `changegate dev down` stops it[/]")
        raise typer.Exit(1)
    ports = dict(DEFAULT_PORTS)
    if base_port is not None:
        ports = {name: base_port + i for i, name in enumerate(DEFAULT_PORTS)}
    stack = DevStack(
        workdir.resolve(),
        ports=ports,
        kafka=kafka,
        database_url=database_url,
        on_step=lambda s: console.print(f"  {s}"),
    )
    started = time.monotonic()
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        console.print("[bold]starting the changegate dev stack[/]")
        stack.start()
        _print_stack(stack, time.monotonic() - started)
        if demo:
            asyncio.run(_demo_stream(stack.settings(), None, demo_interval))
        else:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C (or `dev down`) must not abandon the shutdown half way.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        console.print("[bold]stopping[/] services, broker and PostgreSQL …")
        stack.stop()
        console.print("stopped; nothing left running")


def _print_stack(stack: object, seconds: float) -> None:
    from changegate.cli.devstack import DevStack

    assert isinstance(stack, DevStack)
    table = Table(title=f"changegate dev stack ready in {seconds:.1f}s")
    for col in ("what", "where", "log"):
        table.add_column(col)
    table.add_row("broker (Tansu)", stack.kafka or "", str(stack.logs / "broker.log"))
    table.add_row("PostgreSQL 18", stack.database_url or "", str(stack.workdir / "pgdata/log"))
    for name, svc in stack.services.items():
        table.add_row(name, f"http://127.0.0.1:{svc.port}", str(svc.log_path))
    console.print(table)
    console.print(
        "review queue: curl -H 'Authorization: Bearer dev-reviewer-token' "
        f"http://127.0.0.1:{stack.ports['review-api']}/proposals\n"
        f"API docs: http://127.0.0.1:{stack.ports['review-api']}/docs · "
        f"audit: http://127.0.0.1:{stack.ports['audit']}/audit/entries · Ctrl-C stops everything"
    )


@dev.command("down")
def dev_down(workdir: WorkDir = DEFAULT_WORKDIR) -> None:
    """Stop a stack that `changegate dev up` started from WORKDIR (and nothing else)."""
    from changegate.cli.devstack import down

    if not down(workdir, lambda s: console.print(f"  {s}")):
        console.print(f"no dev stack runs from {workdir}")
        return
    console.print("stopped")


async def _demo_stream(settings: CommonSettings, count: int | None, interval: float) -> int:
    from changegate.cli.demo import contacts
    from changegate.core.contracts.envelope import make_envelope
    from changegate.core.crm import sandbox
    from changegate.core.db import create_pool, migrate_core
    from changegate.core.kafka import make_producer, publish, start_with_retry
    from changegate.core.topics import Topic, TopicNames

    topic = TopicNames(settings.topic_prefix)(Topic.CRM_EVENTS)
    pool = await create_pool(settings.database_url, max_size=2)
    await migrate_core(pool)
    producer = make_producer(settings, "demo-feed")
    await start_with_retry(producer)
    sent = 0
    columns = (TextColumn("demo feed"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=count is None) as progress:
            task = progress.add_task("feed", total=count)
            for contact in contacts():
                if count is not None and sent >= count:
                    break
                # The contact exists in the CRM first, then the CRM and Clay report on it.
                await sandbox.upsert_record(
                    pool, contact.created.object_type, contact.record_id, contact.properties
                )
                for event in (contact.created, contact.enrichment):
                    await publish(producer, topic, event.record_id, make_envelope(event, service="demo-feed"))
                sent += 1
                progress.advance(task)
                if interval:
                    await asyncio.sleep(interval)
    finally:
        await producer.stop()
        await pool.close()
    return sent


@demo_app.command("feed")
def demo_feed(
    count: Annotated[int, typer.Option(min=1, help="contacts to create and enrich")] = 20,
    interval: Annotated[float, typer.Option(min=0, help="seconds between contacts")] = 0.0,
) -> None:
    """Seed COUNT contacts in the sandbox CRM and stream their CRM and Clay events (settings from
    CHANGEGATE_* environment variables, e.g. those `changegate dev up` prints)."""
    sent = asyncio.run(_demo_stream(CommonSettings(), count, interval))
    console.print(f"sent {sent} contacts ({2 * sent} events)")


@schemas_app.command("export")
def schemas_export(
    out: Annotated[Path, typer.Option(help="target folder")] = Path("schemas"),
    check: Annotated[bool, typer.Option(help="only report drift; exit 1 if any")] = False,
) -> None:
    """Write the JSON Schema of every event type and asyncapi.yaml, generated from the models."""
    from changegate.core import schemas

    if check:
        problems = schemas.drift(out)
        if problems:
            console.print(f"[red]out of date in {out}:[/] {', '.join(problems)} — run `make schemas`")
            raise typer.Exit(1)
        console.print(f"{out} matches the models")
        return
    for name in schemas.export(out):
        console.print(f"  wrote {out / name}")
