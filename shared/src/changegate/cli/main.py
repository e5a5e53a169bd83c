"""`changegate`: run the embedded dev stack, feed it a demo stream, export schemas, verify audit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
from changegate.core.settings import SECRETS_DIR, CommonSettings
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from changegate.cli.demo_feed import CrmTarget, ReviewTarget
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
with contextlib.suppress(ImportError):  # reads through the executor's adapter into the detector
    from changegate.cli.crm import app as crm_app

    app.add_typer(crm_app, name="crm")
console = stack.log_friendly(Console(stderr=True, soft_wrap=True))


class Crm(StrEnum):
    SANDBOX = "sandbox"
    HUBSPOT = "hubspot"
    HUBSPOT_SIM = "hubspot-sim"


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
        typer.Option(
            help="broker on this port, services on the next seven (default 19092, 8000-8005; the HubSpot "
            "simulator 8006)"
        ),
    ] = None,
    crm: Annotated[
        Crm,
        typer.Option(
            help="where approved changes go: the sandbox in PostgreSQL, a real HubSpot portal "
            "(private-app token in CHANGEGATE_HUBSPOT_TOKEN), or the HubSpot simulator (a portal of "
            "its own, seeded, sending signed webhooks; no token needed)"
        ),
    ] = Crm.SANDBOX,
    sim_contacts: Annotated[
        int,
        typer.Option(
            min=0, help="--crm hubspot-sim: contacts the simulator starts with (duplicates among them)"
        ),
    ] = 2000,
) -> None:
    """Start the broker, PostgreSQL and every service on loopback; Ctrl-C stops them all."""
    from changegate.cli.devstack import DEFAULT_PORTS, DEV_IDENTITY, DevStack

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
        crm=crm.value,
        sim_contacts=sim_contacts,
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
            from changegate.cli.demo_feed import ReviewTarget

            review = ReviewTarget(f"http://127.0.0.1:{stack.ports['review-api']}", stack.issued[DEV_IDENTITY])
            asyncio.run(
                _demo_stream(
                    stack.settings(),
                    None,
                    demo_interval,
                    ingest=stack.ingest_target(),
                    crm=stack.crm_target(),
                    review=review,
                )
            )
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
    if crm is Crm.HUBSPOT_SIM:
        return {}  # the stack points the executor and ingest at the simulator it starts
    if demo:
        # The demo invents records and values: never let it near a real portal.
        console.print(
            "[red]--demo runs on the sandbox or the HubSpot simulator only (--crm hubspot-sim); "
            "leave out --demo or --crm hubspot[/]"
        )
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
    if stack.crm == Crm.HUBSPOT_SIM:
        try:
            info = httpx.get(f"{stack.simulator_url}/_sim/info", timeout=5).json()
        except (httpx.HTTPError, ValueError) as exc:
            console.print(f"[red]the HubSpot simulator does not answer: {exc}[/]")
            return
        colour = "green" if info["validating"] else "yellow"
        console.print(
            f"HubSpot simulator: {stack.simulator_url} — [{colour}]{info['validation']}[/]; it holds "
            f"{info['records']['contacts']} contacts and {info['records']['companies']} companies, and "
            "reports every change to ingest as signed webhooks (the executor's writes come back as echo).\n"
            "  load them into the detector: changegate crm import · then: changegate detector scan"
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
    crm: CrmTarget | None = None,
    review: ReviewTarget | None = None,
) -> int:
    """The demo feed (``demo_feed.py``) with a progress bar: ``count`` steps (None: until stopped),
    a line a step saying what to watch for, and what should apply by itself looked for in the CRM."""
    from changegate.cli.demo_feed import CrmTarget, demo_stream

    columns = (TextColumn("demo feed"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=count is None) as progress:
        task = progress.add_task("feed", total=count)
        return await demo_stream(
            settings,
            count,
            interval,
            progress.console.print,
            seed=seed,
            run=run,
            ingest=ingest,
            crm=crm or CrmTarget(),
            review=review,
            confirm_seconds=confirm_seconds,
            advance=lambda: progress.advance(task),
        )


def _stack_crm(workdir: Path) -> CrmTarget:
    """The CRM the stack running from ``workdir`` writes to (its state file), else the one the
    environment points the executor at; refuses (exit 2) one that is a real HubSpot portal."""
    from changegate.cli.demo_feed import HUBSPOT_SIM, CrmTarget

    state_file = workdir / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    kind = state.get("crm") or os.environ.get("CHANGEGATE_CRM", "sandbox")
    url = state.get("crm_url") or os.environ.get("CHANGEGATE_HUBSPOT_BASE_URL")
    if kind == Crm.HUBSPOT and url and _answers_as_simulator(url):
        kind = HUBSPOT_SIM
    if kind == Crm.HUBSPOT:
        console.print(
            "[red]this stack writes approved changes to a HubSpot portal "
            f"({url or 'https://api.hubapi.com'}): the demo invents records and values and is never fed "
            "to a real portal[/] — run it on `changegate dev up --crm hubspot-sim` or the sandbox"
        )
        raise typer.Exit(2)
    return CrmTarget(kind, url if kind == HUBSPOT_SIM else None)


def _answers_as_simulator(url: str) -> bool:
    try:
        info = httpx.get(f"{url.rstrip('/')}/_sim/info", timeout=3)
        return info.status_code == 200 and info.json().get("simulator") == "changegate hubspot-sim"
    except (httpx.HTTPError, ValueError):
        return False


@demo_app.command("feed")
def demo_feed(
    count: Annotated[int, typer.Option(min=1, help="scenario steps to feed (six make one round)")] = 24,
    interval: Annotated[float, typer.Option(min=0, help="seconds between steps")] = 0.0,
    workdir: WorkDir = DEFAULT_WORKDIR,
) -> None:
    """Feed COUNT scenario steps — enrichment, duplicates, lifecycle, owner, verification, and a
    conflict, in turn: records made in the stack's CRM (the sandbox, or the HubSpot simulator, which
    reports them as signed webhooks; for the sandbox the feed sends HubSpot's webhooks), then their
    Clay, form, scoring and verifier events as signed webhooks to the ingest service of the stack
    `dev up` runs from WORKDIR (straight onto crm.events when none runs there). A stack that writes
    to a real HubSpot portal is refused. Settings from CHANGEGATE_* environment variables."""
    from changegate.cli.demo_feed import HUBSPOT_SIM, ReviewTarget
    from changegate.cli.webhooks import IngestTarget

    crm = _stack_crm(workdir)
    target = IngestTarget.load(workdir / "ingest.json")
    if target is None:
        if crm.kind == HUBSPOT_SIM:
            console.print(
                f"[red]no ingest service of a dev stack in {workdir}: the simulator reports to it[/]"
            )
            raise typer.Exit(2)
        console.print(f"no ingest service of a dev stack in {workdir}: events go straight onto crm.events")
    review = None
    token_file, state_file = workdir / "token", workdir / "state.json"
    if token_file.is_file() and state_file.is_file():
        port = json.loads(state_file.read_text()).get("ports", {}).get("review-api")
        if port:
            review = ReviewTarget(f"http://127.0.0.1:{port}", token_file.read_text().strip())
    sent = asyncio.run(
        _demo_stream(stack.common(workdir), count, interval, ingest=target, crm=crm, review=review)
    )
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
