"""`changegate policy`: check a policy file, explain a routing, simulate a policy on proposals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from changegate.cli.stack import log_friendly
from changegate.core.contracts import Proposal
from changegate.policy.engine import Policy, PolicyError
from changegate.policy.simulate import proposal_part, read_proposals, simulate
from pydantic import ValidationError
from rich.console import Console
from rich.progress import track
from rich.table import Table

app = typer.Typer(help="Policy files: check, explain, simulate.", no_args_is_help=True)
# soft_wrap: messages carry file paths and rule ids that must stay greppable on one line.
console = log_friendly(Console(soft_wrap=True))
err = log_friendly(Console(stderr=True, soft_wrap=True))

PolicyFile = Annotated[Path, typer.Argument(help="policy YAML", exists=True, dir_okay=False)]


def _load(path: Path | None) -> Policy:
    try:
        return Policy.load(path)
    except PolicyError as exc:
        err.print(f"[red]invalid policy[/]\n{exc}")
        raise typer.Exit(1) from exc


@app.command("check")
def check(
    file: PolicyFile,
    strict: Annotated[bool, typer.Option(help="exit 1 on warnings too")] = False,
) -> None:
    """Validate FILE: schema, guardrails (merges and owner changes never auto-apply), shadowed rules."""
    policy = _load(file)
    for warning in policy.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    console.print(
        f"{file}: valid — version {policy.version}, {len(policy.document.rules)} rules, "
        f"default {policy.document.default.value}, sha256 {policy.content_hash[:12]}…"
    )
    if strict and policy.warnings:
        raise typer.Exit(1)


@app.command("explain")
def explain(
    file: PolicyFile,
    proposal: Annotated[Path, typer.Argument(help="a proposal (or its envelope) as JSON", exists=True)],
) -> None:
    """Which rule of FILE routes PROPOSAL, and why each earlier rule did not match."""
    policy = _load(file)
    try:
        p = Proposal.model_validate(proposal_part(json.loads(proposal.read_text())))
    except json.JSONDecodeError as exc:
        err.print(f"[red]{proposal}: not JSON[/] ({exc})")
        raise typer.Exit(1) from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:6])
        err.print(f"[red]{proposal}: not a proposal[/] ({problems})")
        raise typer.Exit(1) from exc
    for rule in policy.document.rules:
        why = rule.when.mismatches(p)
        if not why:
            break
        console.print(f"  [dim]{rule.id}: no — {'; '.join(why)}[/]")
    route = policy.evaluate(p)
    console.print(f"[bold]{route.action.value}[/] by rule [bold]{route.rule_id}[/]: {route.explanation}")
    if route.review is not None:
        after = route.review.expires_after
        expiry = f"after {after.days}d {after.seconds // 3600}h" if after else "never"
        console.print(
            f"  review queue {route.review.queue}, priority {route.review.priority}, expires {expiry}"
        )


@app.command("simulate")
def simulate_cmd(
    file: PolicyFile,
    source: Annotated[
        Path,
        typer.Option(
            "--from",
            help="proposals as JSON lines (bare, envelopes or review requests)",
            exists=True,
            dir_okay=False,
        ),
    ],
    against: Annotated[
        Path | None, typer.Option(help="the policy in force to compare with (default: the built-in one)")
    ] = None,
) -> None:
    """Route every proposal of --from with FILE: counts and shares per route and rule, and what
    would change against the current policy — before the edit goes live."""
    policy, current = _load(file), _load(against)
    lines = sum(1 for _ in source.open())
    items = track(read_proposals(source), total=lines, description="simulating", console=err, transient=True)
    sim = simulate(policy, items, current)
    for problem in sim.invalid[:10]:
        err.print(f"[yellow]skipped {problem}[/]")
    if len(sim.invalid) > 10:
        err.print(f"[yellow]… and {len(sim.invalid) - 10} more unusable lines[/]")
    if not sim.total:
        err.print("[red]no proposals to simulate[/]")
        raise typer.Exit(1)
    routes = Table(title=f"{sim.total} proposals under {policy.version}")
    for col in ("route", "rule", "proposals", "share"):
        routes.add_column(col, justify="right" if col in ("proposals", "share") else "left")
    for (rule, route), n in sorted(sim.by_rule.items(), key=lambda kv: (-kv[1], kv[0])):
        routes.add_row(route, rule, str(n), f"{n / sim.total:.1%}")
    console.print(routes)
    for route, n in sorted(sim.by_route.items()):
        console.print(f"  {route}: {n} ({n / sim.total:.1%})")
    changes = Table(title=f"against {current.version} ({current.source})")
    for col in ("before", "after", "proposals"):
        changes.add_column(col)
    for (before, after), n in sorted(sim.transitions.items()):
        changes.add_row(before, after, str(n), style=None if before == after else "bold")
    console.print(changes)
    console.print(
        f"{sim.changed_routes} proposals ({sim.changed_routes / sim.total:.1%}) change route; "
        f"{sim.changed_rules} are decided by a different rule"
    )


@app.command("sample")
def sample(
    count: Annotated[int, typer.Option(min=1, help="how many proposals")] = 1000,
    seed: Annotated[int, typer.Option(help="same seed, same proposals")] = 1,
) -> None:
    """Print COUNT synthetic proposals of all five kinds as JSON lines (input for `simulate`)."""
    from changegate.policy.samples import sample_proposals

    for proposal in sample_proposals(count, seed):
        print(proposal.model_dump_json())
