"""`changegate policy`: check a policy file, explain a routing, simulate a policy on proposals; run a
candidate in shadow on live traffic, compare it (diff) and promote it.

The shadow commands use the database of CHANGEGATE_DATABASE_URL (as the policy service does)."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from changegate.cli.stack import log_friendly
from changegate.core.contracts import Proposal
from changegate.policy.engine import Policy, PolicyError
from changegate.policy.simulate import proposal_part, read_proposals, simulate
from pydantic import ValidationError
from rich.console import Console
from rich.progress import track
from rich.table import Table

T = TypeVar("T")
app = typer.Typer(
    help="Policy files: check, explain, simulate; shadow a candidate on live traffic, diff, promote.",
    no_args_is_help=True,
)
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


# -- shadow mode -----------------------------------------------------------------------------------


def _with_db(work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work`` with a connection to the policy service's database (its tables migrated)."""
    from changegate.core.db import create_pool, migrate
    from changegate.core.settings import CommonSettings

    async def run() -> T:
        pool = await create_pool(CommonSettings().database_url, max_size=1)
        try:
            await migrate(pool, "policy", "changegate.policy.migrations")
            async with pool.acquire() as conn:
                return await work(conn)
        finally:
            await pool.close()

    return asyncio.run(run())


By = Annotated[str, typer.Option(help="who does it, as recorded (default: the login name)")]


@app.command("shadow")
def shadow_cmd(file: PolicyFile, by: By = "") -> None:
    """Run FILE in shadow beside the policy in force: the policy service routes every new proposal
    with it too and records its routes, never acting on them (it picks the candidate up within its
    poll interval). A candidate already in shadow stops. Compare with `changegate policy diff`."""
    from changegate.policy import shadow

    policy = _load(file)
    _with_db(lambda conn: shadow.start(conn, policy, by or getpass.getuser()))
    console.print(
        f"{policy.version} (sha256 {policy.content_hash[:12]}…) runs in shadow from the policy"
        " service's next poll; nothing it routes is acted on"
    )


@app.command("shadow-stop")
def shadow_stop() -> None:
    """Stop the candidate in shadow (its recorded routes stay for `diff`)."""
    from changegate.policy import shadow

    version = _with_db(shadow.stop)
    console.print(f"{version} no longer runs in shadow" if version else "no candidate ran in shadow")


@app.command("diff")
def diff_cmd(
    candidate: Annotated[
        str | None, typer.Option(help="a candidate's sha256 (default: the one in shadow, else the last)")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="the diff as JSON (what GET /v1/shadow says)")
    ] = False,
    limit: Annotated[int, typer.Option(min=0, help="overruled proposals to list")] = 20,
) -> None:
    """The candidate in shadow against the policy in force, on the same live proposals: per rule of
    each, where it routes them; the proposals the candidate would have auto-applied that a human
    rejected or modified; and how often each rule's own decisions agree with the humans'."""
    from changegate.policy import shadow

    d = _with_db(lambda conn: shadow.diff(conn, candidate, limit))
    if as_json:
        print(d.model_dump_json(indent=1))
        return
    if d.candidate_version is None:
        err.print("[red]no candidate has run in shadow[/]: start one with `changegate policy shadow FILE`")
        raise typer.Exit(1)
    state = "running" if d.running else "stopped"
    console.print(
        f"candidate {d.candidate_version} ({state}; started by {d.started_by}"
        f" at {d.started_at:%Y-%m-%d %H:%M} UTC): {d.proposals} proposals routed by both,"
        f" {d.changed_routes} routed differently"
    )
    table = Table(title="per rule (agreement: of the rule's auto-applies and rejects a human decided)")
    for col in ("version", "rule", "auto_apply", "review", "reject", "human decided", "agreed",
                "disagreed", "left to human", "agreement"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("version", "rule") else "right")
    for row in d.rules:
        share = "-" if row.agreement is None else f"{row.agreement:.1%}"
        table.add_row(
            row.version, row.rule, *(str(n) for n in (row.auto_apply, row.review, row.reject,
            row.human_decided, row.agreed, row.disagreed, row.left_to_human)), share,
        )  # fmt: skip
    console.print(table)
    for transition, n in d.transitions.items():
        console.print(f"  live -> candidate  {transition}: {n}")
    console.print(
        f"[bold]{d.would_auto_apply_overruled}[/] proposals the candidate would have auto-applied were"
        " rejected or modified by a human"
    )
    for o in d.overruled:
        console.print(
            f"  {o.proposal_id} {o.kind} confidence {o.confidence:.3f} rule {o.rule}: {o.outcome}"
            f" by {o.decided_by}"
        )


@app.command("promote")
def promote_cmd(
    to: Annotated[
        Path | None,
        typer.Option(
            help="the policy file the service reads (default: CHANGEGATE_POLICY_FILE); it is replaced",
            dir_okay=False,
        ),
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="refuse unless the candidate in shadow is this version")
    ] = None,
    by: By = "",
) -> None:
    """Make the candidate in shadow the policy in force: write it over the policy file the service
    reads (it switches on its next poll or SIGHUP) and record who promoted which version, replacing
    which. Nothing is promoted by itself."""
    from changegate.policy import shadow
    from changegate.policy.settings import PolicySettings

    target = to or PolicySettings().policy_file
    if target is None:
        err.print(
            "[red]no policy file to write[/]: the service runs the built-in policy; give --to (and point"
            " CHANGEGATE_POLICY_FILE at it)"
        )
        raise typer.Exit(2)
    live = _load(target if target.exists() else None)

    def write(candidate: Policy) -> None:  # atomically: the service never reads half a file
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(candidate.content)
        os.replace(tmp, target)

    try:
        promoted = _with_db(
            lambda conn: shadow.promote(conn, by or getpass.getuser(), live, str(target), write, version)
        )
    except shadow.PromotionError as exc:
        err.print(f"[red]not promoted:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(
        f"promoted {promoted.version} (sha256 {promoted.content_hash[:12]}…) over {live.version}:"
        f" written to {target}, recorded as promoted by {by or getpass.getuser()}"
    )


@app.command("promotions")
def promotions_cmd() -> None:
    """Every promotion: which version, by whom, when, replacing which."""
    from changegate.policy import shadow

    rows = _with_db(shadow.promotions)
    table = Table(title=f"{len(rows)} promotions")
    for col in ("when (UTC)", "version", "promoted by", "replaced", "written to"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            f"{r['promoted_at']:%Y-%m-%d %H:%M:%S}", r["policy_version"], r["promoted_by"],
            r["replaced_version"], r["written_to"],
        )  # fmt: skip
    console.print(table)


@app.command("suggest")
def suggest_cmd(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="where to write the candidate policy", dir_okay=False)
    ],
    days: Annotated[int, typer.Option(min=1, help="human decisions of the last DAYS days")] = 30,
    min_support: Annotated[
        int, typer.Option(min=1, help="decisions at or above a threshold before it is suggested")
    ] = 100,
    max_corrected: Annotated[
        int, typer.Option(min=0, help="rejected or modified ones allowed at or above it")
    ] = 0,
    policy_file: Annotated[
        Path | None,
        typer.Option(
            "--policy", help="the policy in force (default: CHANGEGATE_POLICY_FILE or the built-in)"
        ),
    ] = None,
    version: Annotated[str | None, typer.Option(help="the candidate's version")] = None,
) -> None:
    """How reviewers decided what each review rule sent them, per confidence band (approved
    unchanged, modified, rejected, median time to decide); where a rule's proposals above a
    threshold were approved unchanged often enough, a suggestion with its evidence, written as a
    candidate policy to run in shadow (`changegate policy shadow OUT`). Nothing is applied; the
    guardrails refuse suggestions that would auto-apply merges, owner changes or human-only fields."""
    from changegate.core.contracts.base import utcnow
    from changegate.policy import suggest
    from changegate.policy.settings import PolicySettings

    live = _load(policy_file or PolicySettings().policy_file)
    now = utcnow()
    decided = _with_db(lambda conn: suggest.decisions(conn, suggest.window(days, now)))
    table = Table(
        title=f"{len(decided)} human decisions in {days} days on what {live.version} sent to review"
    )
    for col in ("rule", "confidence", "approved unchanged", "modified", "rejected", "median time to decide"):
        table.add_column(col, justify="left" if col == "rule" else "right")
    for (rule, band), o in suggest.by_band(decided).items():
        median = o.median_seconds
        table.add_row(
            rule, band, str(o.approved), str(o.modified), str(o.rejected),
            "-" if median is None else f"{median / 60:.1f} min",
        )  # fmt: skip
    console.print(table)
    found = suggest.suggest(live, decided, days, min_support, max_corrected)
    text, checked = suggest.candidate(live, found, version or f"{live.version}+suggested-{now:%Y%m%d}")
    for s in checked:
        if s.refused:
            console.print(f"[red]refused by the guardrails[/] {s.evidence}\n  {s.refused}")
        else:
            console.print(f"[bold]suggested[/] {s.evidence}")
    if not any(s.refused is None for s in checked):
        console.print(f"no suggestion: no review rule has {min_support} decisions above a threshold with"
                      f" at most {max_corrected} corrected")  # fmt: skip
        raise typer.Exit(1)
    out.write_text(text)
    console.print(f"wrote the candidate to {out}: run it in shadow with `changegate policy shadow {out}`")
