"""`changegate`: run the embedded dev stack, feed it a demo stream, export schemas, verify audit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from changegate.cli import stack
from changegate.cli.dlq import consumer_app, dlq_app
from changegate.cli.keys import app as keys_app
from changegate.cli.migrate import migrate_command
from changegate.cli.replay import replay_command
from changegate.cli.stack import DEFAULT_WORKDIR, WorkDir
from changegate.cli.status import status_command
from changegate.cli.tokens import app as tokens_app
from changegate.core.contracts import ObjectType
from changegate.core.settings import SECRETS_DIR, CommonSettings
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from changegate.cli.webhooks import IngestTarget

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
app.add_typer(dlq_app, name="dlq")
app.add_typer(consumer_app, name="consumer")
app.add_typer(tokens_app, name="tokens")
app.add_typer(keys_app, name="keys")
app.command("migrate")(migrate_command)
app.command("status")(status_command)
app.command("replay")(replay_command)

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
console = stack.log_friendly(Console(stderr=True, soft_wrap=True))


class Crm(StrEnum):
    SANDBOX = "sandbox"
    HUBSPOT = "hubspot"


@dev.command("up")
def dev_up(
    demo: Annotated[bool, typer.Option(help="feed a synthetic CRM event stream")] = False,
    demo_interval: Annotated[float, typer.Option(help="seconds between demo scenario steps")] = 3.0,
    workdir: WorkDir = DEFAULT_WORKDIR,
    kafka: Annotated[
        str | None, typer.Option(help="use this Kafka (host:port) instead of the embedded broker")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="use this PostgreSQL (DSN) instead of the embedded one")
    ] = None,
    base_port: Annotated[
        int | None,
        typer.Option(help="broker on this port, services on the next six (default 19092, 8000-8005)"),
    ] = None,
    crm: Annotated[
        Crm,
        typer.Option(
            help="where approved changes go: the sandbox in PostgreSQL, or a real HubSpot portal "
            "(private-app token in CHANGEGATE_HUBSPOT_TOKEN)"
        ),
    ] = Crm.SANDBOX,
) -> None:
    """Start the broker, PostgreSQL and every service on loopback; Ctrl-C stops them all."""
    from changegate.cli.devstack import DEFAULT_PORTS, DevStack

    crm_env = _crm_env(crm, demo)
    if (workdir / "state.json").exists():
        console.print(f"[yellow]a stack may already run from {workdir}; `changegate dev down` stops it[/]")
        raise typer.Exit(1)
    ports = dict(DEFAULT_PORTS)
    if base_port is not None:
        ports = {name: base_port + i for i, name in enumerate(DEFAULT_PORTS)}
    from changegate.cli.demo import DEMO_ENV

    stack = DevStack(
        workdir.resolve(),
        ports=ports,
        kafka=kafka,
        database_url=database_url,
        on_step=lambda s: console.print(f"  {s}"),
        extra_env={**(DEMO_ENV if demo else {}), **crm_env},
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
            asyncio.run(_demo_stream(stack.settings(), None, demo_interval, ingest=stack.ingest_target()))
        else:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C (or `dev down`) must not abandon the shutdown half way.
        # Nor may a terminal that went away: printing then fails (rich exits on a broken pipe),
        # stopping must not.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with contextlib.suppress(OSError, SystemExit):
            console.print("[bold]stopping[/] services, broker and PostgreSQL …")
        stack.stop()
        with contextlib.suppress(OSError, SystemExit):
            console.print("stopped; nothing left running")


def _crm_env(crm: Crm, demo: bool) -> dict[str, str]:
    """The executor's CRM settings for ``dev up``; refuses what would write where it must not."""
    if crm is Crm.SANDBOX:
        return {"CHANGEGATE_CRM": "sandbox"}
    if demo:
        # The demo invents records and values: never let it near a real portal.
        console.print("[red]--demo runs on the sandbox only; leave out --demo or --crm hubspot[/]")
        raise typer.Exit(2)
    in_secrets = SECRETS_DIR is not None and (Path(SECRETS_DIR) / "CHANGEGATE_HUBSPOT_TOKEN").is_file()
    if not (os.environ.get("CHANGEGATE_HUBSPOT_TOKEN") or in_secrets):
        console.print(
            "[red]--crm hubspot needs a private app's access token:[/] export CHANGEGATE_HUBSPOT_TOKEN=… "
            "(scopes: crm.objects.contacts.read/write, crm.objects.companies.read/write, "
            "crm.objects.owners.read)"
        )
        raise typer.Exit(2)
    console.print(
        "[yellow]approved changes will be written to the HubSpot portal of that token[/] "
        f"({os.environ.get('CHANGEGATE_HUBSPOT_BASE_URL', 'https://api.hubapi.com')})"
    )
    return {"CHANGEGATE_CRM": "hubspot"}


def _print_stack(stack: object, seconds: float) -> None:
    from changegate.cli.devstack import DEV_IDENTITY, DevStack

    assert isinstance(stack, DevStack)
    token = stack.issued.get(DEV_IDENTITY, "")
    token_file = stack.workdir / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    table = Table(title=f"changegate dev stack ready in {seconds:.1f}s")
    for col in ("what", "where", "log"):
        table.add_column(col)
    table.add_row("broker (Tansu)", stack.kafka or "", str(stack.logs / "broker.log"))
    table.add_row("PostgreSQL 18", stack.database_url or "", str(stack.workdir / "pgdata/log"))
    for name, svc in stack.services.items():
        table.add_row(name, f"http://127.0.0.1:{svc.port}", str(svc.log_path))
    console.print(table)
    ingest = f"http://127.0.0.1:{stack.ports['ingest']}"
    console.print(
        f"your API token ({DEV_IDENTITY}, admin; also in {token_file}):\n  {token}\n"
        f"  export CHANGEGATE_TOKEN=$(cat {token_file})\n"
        'review queue: curl -H "Authorization: Bearer $CHANGEGATE_TOKEN" '
        f"http://127.0.0.1:{stack.ports['review-api']}/v1/proposals\n"
        f"inbox: http://127.0.0.1:{stack.ports['review-api']}/inbox (sign in with the token) · "
        f"API docs: http://127.0.0.1:{stack.ports['review-api']}/docs · "
        f"audit: http://127.0.0.1:{stack.ports['audit']}/audit/entries · Ctrl-C stops everything\n"
        f"webhooks: {ingest}/v1/webhooks/hubspot and /v1/webhooks/<source> (docs: {ingest}/docs; "
        f"this stack's webhook secrets: {stack.ingest_file})"
    )


@dev.command("down")
def dev_down(workdir: WorkDir = DEFAULT_WORKDIR) -> None:
    """Stop a stack that `changegate dev up` started from WORKDIR (and nothing else)."""
    from changegate.cli.devstack import down

    if not down(workdir, lambda s: console.print(f"  {s}")):
        console.print(f"no dev stack runs from {workdir}")
        return
    console.print("stopped")


async def _demo_stream(
    settings: CommonSettings,
    count: int | None,
    interval: float,
    seed: int = 7,
    run: str | None = None,
    ingest: IngestTarget | None = None,
    confirm_seconds: float = 30.0,
) -> int:
    """Seed each step's records in the sandbox CRM, then send the events that report on them: as
    signed webhooks to ``ingest`` when given (HubSpot batches, Clay rows, verifier results, scores,
    Typeform submissions), else straight onto crm.events; ``count`` steps (None: until stopped), a
    line a step saying what to watch for. What should apply by itself is looked for in the CRM: a
    line says it applied once it is there, or that it did not within ``confirm_seconds`` (a finite
    feed waits for those answers before it returns)."""
    from changegate.cli.demo import DEMO_OWNERS, steps
    from changegate.cli.webhooks import WebhookSender
    from changegate.core.contracts.envelope import make_envelope
    from changegate.core.db import create_pool, migrate, migrate_core
    from changegate.core.kafka import make_producer, publish, start_with_retry
    from changegate.core.topics import Topic, TopicNames
    from changegate.executor.crm import sandbox

    topic = TopicNames(settings.topic_prefix)(Topic.CRM_EVENTS)
    pool = await create_pool(settings.database_url, max_size=2)
    await migrate_core(pool)
    await migrate(pool, "executor", "changegate.executor.migrations")
    for owner in DEMO_OWNERS:  # the owners the demo's records are assigned to exist in the CRM
        await sandbox.upsert_owner(pool, owner)
    producer = make_producer(settings, "demo-feed")
    await start_with_retry(producer)
    client = httpx.AsyncClient(timeout=30)
    webhooks = WebhookSender(ingest, client) if ingest is not None else None
    sent = 0
    columns = (TextColumn("demo feed"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # (deadline, scenario, record, values the policy should apply by itself)
    expected: list[tuple[float, str, str, dict[str, Any]]] = []

    async def confirm(say: Callable[[str], None]) -> None:
        """Say, for each expected write, that the CRM holds it, or that it did not come in time."""
        waiting = []
        for deadline, scenario, record_id, values in expected:
            held = await sandbox.get_record(pool, ObjectType.CONTACT, record_id) or {}
            shown = ", ".join(f"{k} = {v}" for k, v in values.items())
            if all(held.get(k) == v for k, v in values.items()):
                say(f"  [green]{scenario:>12} applied[/]: {record_id} {shown} (seen in the CRM)")
            elif time.monotonic() >= deadline:
                late = f"within {confirm_seconds:.0f} s"
                say(f"  [red]{scenario:>12} NOT applied[/] {late}: {record_id} {shown}")
            else:
                waiting.append((deadline, scenario, record_id, values))
        expected[:] = waiting

    try:
        with Progress(*columns, console=console, transient=count is None) as progress:
            task = progress.add_task("feed", total=count)
            for step in steps(seed, run):
                if count is not None and sent >= count:
                    break
                for record_id, properties in step.records.items():
                    await sandbox.upsert_record(pool, ObjectType.CONTACT, record_id, properties)
                for event in step.events:
                    if webhooks is not None:
                        await webhooks.send(event)
                    else:
                        envelope = make_envelope(event, service="demo-feed")
                        await publish(producer, topic, event.record_id, envelope)
                progress.console.print(f"  [cyan]{step.scenario:>12}[/] {step.shows}")
                deadline = time.monotonic() + confirm_seconds
                expected += [(deadline, step.scenario, r, values) for r, values in step.applies.items()]
                sent += 1
                progress.advance(task)
                await confirm(progress.console.print)
                if interval:
                    await asyncio.sleep(interval)
            while expected:
                await asyncio.sleep(0.5)
                await confirm(progress.console.print)
    finally:
        await client.aclose()
        await producer.stop()
        await pool.close()
    return sent


@demo_app.command("feed")
def demo_feed(
    count: Annotated[int, typer.Option(min=1, help="scenario steps to feed (five make one round)")] = 20,
    interval: Annotated[float, typer.Option(min=0, help="seconds between steps")] = 0.0,
    workdir: WorkDir = DEFAULT_WORKDIR,
) -> None:
    """Feed COUNT scenario steps — enrichment, duplicates, lifecycle, owner, verification, in turn:
    records seeded in the sandbox CRM, then their HubSpot, Clay, form, scoring and verifier events
    as signed webhooks to the ingest service of the stack `dev up` runs from WORKDIR (straight onto
    crm.events when none runs there); settings from CHANGEGATE_* environment variables."""
    from changegate.cli.webhooks import IngestTarget

    target = IngestTarget.load(workdir / "ingest.json")
    if target is None:
        console.print(f"no ingest service of a dev stack in {workdir}: events go straight onto crm.events")
    sent = asyncio.run(_demo_stream(stack.common(workdir), count, interval, ingest=target))
    console.print(f"fed {sent} scenario steps")


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
