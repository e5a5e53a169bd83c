"""`changegate detector …`: train the duplicate finder's model on a CRM snapshot; learn the reliability
table that calibrates every detector's confidence from reviewers' decisions."""

from __future__ import annotations

import asyncio
import csv
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from changegate.cli import stack
from changegate.cli.stack import DEFAULT_WORKDIR, WorkDir, log_friendly
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    from datetime import datetime

    from changegate.core.contracts import ObjectType, Proposal
    from changegate.core.signing import SigningKey
    from changegate.detector.reliability import CellCounts
    from changegate.detector.scan import Found
    from changegate.detector.settings import DetectorSettings

app = typer.Typer(
    help="The detector: train the duplicate finder on your records; find the duplicates already there;"
    " calibrate its confidences on reviewers' decisions.",
    no_args_is_help=True,
)
console = log_friendly(Console(stderr=True, soft_wrap=True))

ID_FIELDS = ("record_id", "hs_object_id", "id")
Snapshot = list[tuple[str, dict[str, Any]]]


class SnapshotError(ValueError):
    """A snapshot that cannot be read, with the reason (file and line)."""


def _progress() -> Progress:
    """The bar a long detector command shows on the console (stderr)."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    return Progress(*columns, TimeElapsedColumn(), console=console)


def _record_id(obj: dict[str, Any], fallback: str) -> str:
    return next((str(obj[k]) for k in ID_FIELDS if obj.get(k) not in (None, "")), fallback)


def read_jsonl(path: Path, problems: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """One record per line: ``{"record_id": …, "properties": {…}}`` or the properties themselves
    with an id field (record_id, hs_object_id or id; else the line number)."""
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{number}: not JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{path}:{number}: not a JSON object")
                continue
            props = obj.get("properties", obj)
            if not isinstance(props, dict):
                problems.append(f"{path}:{number}: properties is not an object")
                continue
            yield _record_id(obj, f"line-{number}"), props


def read_csv(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """A header row of property names (HubSpot's export: firstname, lastname, email, …)."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for number, row in enumerate(csv.DictReader(fh), 2):
            props = {k.strip(): v for k, v in row.items() if k}
            yield _record_id(props, f"row-{number}"), props


async def read_database(url: str, object_type: str) -> Snapshot:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        rows = await conn.fetch(
            "SELECT record_id, properties FROM detector_records WHERE object_type = $1 AND NOT deleted",
            object_type,
        )
    finally:
        await conn.close()
    return [(r["record_id"], r["properties"]) for r in rows]


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """Known duplicate pairs (past merges): CSV or JSONL rows with two record ids."""
    pairs = []
    text = path.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith(("{", "[")):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SnapshotError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            ids = list(obj.values())[:2] if isinstance(obj, dict) else obj[:2]
        else:
            ids = [c.strip() for c in line.split(",")[:2]]
        if len(ids) != 2 or not all(ids):
            raise SnapshotError(f"{path}:{number}: expected two record ids")
        if number == 1 and ids == ["record_id_l", "record_id_r"]:
            continue  # a header
        pairs.append((str(ids[0]), str(ids[1])))
    return pairs


def _model_table(model: Any) -> Table:
    table = Table(title=f"model {model.model_version} (sha256 {model.sha256[:12]})")
    for column in ("comparison", "level", "m", "u", "weight (bits)", "TF"):
        table.add_column(column)
    for comparison in model.comparisons:
        for level in comparison.comparison_levels:
            table.add_row(
                comparison.output_column_name,
                level.label_for_charts,
                f"{level.m_probability:.4g}",
                f"{level.u_probability:.3g}",
                f"{math.log2(level.m_probability / level.u_probability):+.2f}",
                level.tf_adjustment_column or "",
            )
    return table


@app.command("train")
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write the model (JSON)")],
    jsonl: Annotated[Path | None, typer.Option(help="a JSONL export, one record per line")] = None,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="a CSV export with a header row")] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="the detector's PostgreSQL (default: CHANGEGATE_DATABASE_URL, else the dev stack's), "
            "when no file is given"
        ),
    ] = None,
    workdir: WorkDir = DEFAULT_WORKDIR,
    object_type: Annotated[str, typer.Option(help="contact or company (the database's records)")] = "contact",
    labels: Annotated[
        Path | None,
        typer.Option(help="optional known duplicate pairs (past merges) to check the model against"),
    ] = None,
    u_pairs: Annotated[float, typer.Option(min=1e3, help="random pairs for u")] = 2e6,
    em_pairs: Annotated[float, typer.Option(min=1e3, help="most pairs per EM session")] = 1e6,
    seed: Annotated[int, typer.Option(help="random sampling seed")] = 42,
    model_version: Annotated[
        str | None, typer.Option(help="version to name (default: trained-<UTC time>)")
    ] = None,
) -> None:
    """Estimate the duplicate finder's model from a CRM snapshot, without labels: u from random
    pairs, m by expectation-maximisation (Splink), term frequencies of names and cities. Point
    the detector at the file with CHANGEGATE_MATCH_MODEL."""
    from changegate.detector.matching.engine import DuplicateFinder
    from changegate.detector.matching.normalize import features
    from changegate.detector.matching.training import TrainingOptions
    from changegate.detector.matching.training import train as fit

    if jsonl and csv_file:
        raise typer.BadParameter("give --jsonl or --csv, not both")
    problems: list[str] = []
    try:
        if jsonl:
            snapshot: Snapshot = list(read_jsonl(jsonl, problems))
        elif csv_file:
            snapshot = list(read_csv(csv_file))
        else:
            url = database_url or stack.common(workdir).database_url
            console.print(f"reading {object_type} records from PostgreSQL")
            snapshot = asyncio.run(read_database(url, object_type))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        console.print(f"[red]cannot read the snapshot:[/] {exc}")
        raise typer.Exit(2) from exc
    _print_skipped(problems)
    with _progress() as progress:
        task = progress.add_task("normalising records", total=len(snapshot))
        ids, records = [], []
        for record_id, props in snapshot:
            ids.append(record_id)
            records.append(features(object_type, props))
            progress.advance(task)
        if len(records) < 2:
            console.print("[red]the snapshot has fewer than two records[/]")
            raise typer.Exit(2)
        steps = progress.add_task("training", total=None)
        model = fit(
            records,
            TrainingOptions(u_pairs=u_pairs, em_pairs=em_pairs, seed=seed, model_version=model_version),
            step=lambda s: progress.update(steps, description=f"training: {s}"),
        )
        progress.update(steps, description="training: done", total=1, completed=1)
    model.save(out)
    console.print(_model_table(model))
    console.print(
        f"prior (two random records match): {model.probability_two_random_records_match:.3g}; "
        f"wrote {out} — set CHANGEGATE_MATCH_MODEL={out}"
    )
    if labels:
        try:
            pairs = read_pairs(labels)
        except (OSError, UnicodeDecodeError, SnapshotError) as exc:
            console.print(f"[red]cannot read the labelled pairs:[/] {exc}")
            raise typer.Exit(2) from exc
        where = {rid: i for i, rid in enumerate(ids)}
        finder = DuplicateFinder(model)
        known = [(where[a], where[b]) for a, b in pairs if a in where and b in where]
        probabilities = sorted(finder.compare(records[i], ids[j], records[j]).probability for i, j in known)
        if not probabilities:
            console.print(f"[yellow]none of the {len(pairs)} labelled pairs is in the snapshot[/]")
            return
        above = sum(p >= finder.threshold for p in probabilities)
        console.print(
            f"check against {len(known)} labelled pairs (of {len(pairs)}): {above / len(known):.1%} at or"
            f" above the review threshold {finder.threshold}; median probability"
            f" {probabilities[len(probabilities) // 2]:.3f}"
        )


def read_decisions(path: Path, problems: list[str]) -> Iterator[Any]:
    """Decisions, one a line: bare or in their envelope (as on the decisions topic)."""
    from changegate.core.contracts import Decision
    from pydantic import ValidationError

    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                if isinstance(raw, dict) and raw.get("event_type") == "decision":
                    raw = raw.get("payload")
                yield Decision.model_validate(raw)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{number}: not JSON ({exc.msg})")
            except ValidationError as exc:
                problems.append(f"{path}:{number}: not a decision ({exc.errors()[0]['msg']})")


@app.command("calibrate")
def calibrate(
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write the reliability table (JSON)")],
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="decisions as JSON lines (bare, or envelopes as on the decisions topic)",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    from_database: Annotated[
        bool,
        typer.Option(
            "--from-database",
            help="the human decisions the detector recorded in its PostgreSQL as they were made"
            " (instead of --from)",
        ),
    ] = False,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="with --from-database: the detector's PostgreSQL (default: CHANGEGATE_DATABASE_URL,"
            " else the dev stack's)"
        ),
    ] = None,
    workdir: WorkDir = DEFAULT_WORKDIR,
    version: Annotated[
        str | None, typer.Option(help="version to name (default: calibrated-<UTC time>)")
    ] = None,
    prior_weight: Annotated[
        float, typer.Option(min=0.001, help="pseudo-decisions a detector's prior counts as")
    ] = 20.0,
    prior_cap: Annotated[
        float, typer.Option(min=0.001, max=1.0, help="the most a prior counts as (1: no cap)")
    ] = 0.9,
    level: Annotated[
        float,
        typer.Option(
            min=0.5,
            max=0.999,
            help="credible level of the lower bound each proposal states (the evidence floor a policy's"
            " min_confidence_bound gates on)",
        ),
    ] = 0.95,
) -> None:
    """Learn the reliability table from reviewers' decisions: per cell of proposals alike (a source,
    field and fill or overwrite; a verifier and status; a defined event; a score band; a territory
    rule; a match-probability band), how many were approved unchanged and how many rejected or
    corrected. Only human decisions count (auto-applied, expired and superseded ones say nothing).
    The decisions come from a file of JSON lines (--from) or from the detector's own database
    (--from-database: every human decision made up to now, as its lifecycle consumer recorded it).
    Point the detector at the file with CHANGEGATE_RELIABILITY_FILE; each proposal then says
    whether its confidence rests on reviewers' decisions or on its prior alone."""
    from changegate.core.contracts.base import utcnow
    from changegate.detector import reliability

    if (source is None) == (not from_database):
        raise typer.BadParameter("give --from FILE or --from-database, one of them")
    if database_url and not from_database:
        raise typer.BadParameter("--database-url reads decisions only with --from-database")
    now = utcnow()
    observed: list[tuple[str, bool]] | dict[str, CellCounts]
    if source is not None:
        observed, used, learned_from = _decisions_from_file(source)
    else:
        observed, used = _decisions_from_database(workdir, database_url, now)
        learned_from = f"{used} human decisions recorded in the detector's database up to {now.isoformat()}"
    # The table's learned_at is the moment its decisions end: the detector's online learning
    # (CHANGEGATE_RELIABILITY_LEARN_SECONDS) adds only the decisions made after it.
    table = reliability.learn(
        observed,
        version=version or f"calibrated-{now:%Y%m%dT%H%M%SZ}",
        learned_from=learned_from,
        learned_at=now,
        prior_weight=prior_weight,
        prior_cap=None if prior_cap >= 1 else prior_cap,
        level=level,
    )
    out.write_text(table.model_dump_json(indent=1) + "\n")
    shown = Table(title=f"reliability table {table.version}: {len(table.cells)} cells from {used} decisions")
    for column in ("cell", "approved unchanged", "corrected", "share approved"):
        shown.add_column(column, justify="left" if column == "cell" else "right")
    for key, counts in table.cells.items():
        shown.add_row(
            key, str(counts.approved), str(counts.corrected), f"{counts.approved / counts.decided:.1%}"
        )
    console.print(shown)
    console.print(f"wrote {out} — set CHANGEGATE_RELIABILITY_FILE={out} for the detector")


def _print_skipped(problems: list[str], shown: int = 20) -> None:
    """The first unusable input lines, and how many more there were."""
    for problem in problems[:shown]:
        console.print(f"[yellow]skipped[/] {problem}")
    if len(problems) > shown:
        console.print(f"[yellow]… and {len(problems) - shown} more unusable lines[/]")


def _decisions_from_file(source: Path) -> tuple[list[tuple[str, bool]], int, str]:
    """What the human decisions in ``source`` say of each cell; how many decisions were human, and
    what the table says it was learnt from."""
    from changegate.detector import reliability

    problems: list[str] = []
    observed: list[tuple[str, bool]] = []
    decisions = used = 0
    try:
        with _progress() as progress:
            task = progress.add_task(f"reading {source.name}", total=None)
            for decision in read_decisions(source, problems):
                decisions += 1
                seen = reliability.observations(decision)
                used += bool(seen)
                observed += seen
                progress.advance(task)
    except (OSError, UnicodeDecodeError) as exc:
        console.print(f"[red]cannot read the decisions:[/] {exc}")
        raise typer.Exit(2) from exc
    _print_skipped(problems)
    return observed, used, f"{used} human decisions of {decisions} read from {source.name}"


def _decisions_from_database(
    workdir: Path, database_url: str | None, until: datetime
) -> tuple[dict[str, CellCounts], int]:
    """Per cell, the counts of the human decisions the detector recorded (made up to ``until``)."""
    import asyncpg
    from changegate.core.settings import CommonSettings
    from pydantic import ValidationError

    # Only the database is needed: a detector setting beside it (a model file) cannot stop this.
    try:
        settings = stack.settings(
            workdir, CommonSettings, **({"database_url": database_url} if database_url else {})
        )
    except ValidationError as exc:
        console.print(f"[red]the settings cannot be used:[/] {exc}")
        raise typer.Exit(2) from exc

    async def read() -> tuple[dict[str, CellCounts], int]:
        from changegate.detector import learning

        conn = await asyncpg.connect(settings.database_url)
        try:
            return await learning.counts(conn, None, until)
        finally:
            await conn.close()

    try:
        with _progress() as progress:
            progress.add_task("counting the decisions the detector recorded", total=None)
            return asyncio.run(read())
    except asyncpg.UndefinedTableError as exc:
        console.print(
            "[red]no decisions recorded in this database:[/] the detector has not migrated it"
            " (point --database-url at the detector's PostgreSQL)"
        )
        raise typer.Exit(2) from exc
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        console.print(f"[red]cannot read the detector's database:[/] {exc}")
        raise typer.Exit(2) from exc


def _write_report(out: Path, found: list[Found]) -> None:
    from changegate.detector.scan import rows

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        columns = ["cluster_id", "status", "confidence", "size", "survivor", "merged", "weakest_pair"]
        columns += ["agree", "disagree", "flags", "rationale", "proposal_id"]
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows(found):
                writer.writerow(
                    {k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()}
                )
    else:
        with out.open("w", encoding="utf-8") as fh:
            for row in rows(found):
                fh.write(json.dumps(row, default=str) + "\n")


@app.command("scan")
def scan(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="the report: CSV (.csv) or one JSON object a line (.jsonl)")
    ] = Path("duplicates.csv"),
    publish: Annotated[
        bool, typer.Option(help="propose the most confident new clusters for review (else: the report only)")
    ] = False,
    limit: Annotated[
        int, typer.Option("--max", min=1, help="proposals one --publish run sends at most")
    ] = 25,
    object_type: Annotated[str, typer.Option(help="contact or company")] = "contact",
    database_url: Annotated[
        str | None,
        typer.Option(
            help="the detector's PostgreSQL (default: CHANGEGATE_DATABASE_URL, else the dev stack's)"
        ),
    ] = None,
    workdir: WorkDir = DEFAULT_WORKDIR,
) -> None:
    """Find the duplicate clusters already in the records the detector knows (`changegate crm
    import` loads a CRM's), as the detector would have found them had it seen every record arrive,
    and write a report: each cluster's survivor, confidence (its weakest pair's), evidence and
    status (new, open: a merge for some of its records waits already, decided). Nothing is proposed
    unless --publish: then the --max most confident new clusters, highest first; run it again for
    the next ones. The detector's settings (CHANGEGATE_MATCH_*) apply; publishing signs with the
    detector's key (CHANGEGATE_SIGNING_KEY; a dev stack's own)."""
    import os

    from changegate.core.contracts import ObjectType
    from changegate.detector.settings import DetectorSettings

    overrides: dict[str, Any] = {}
    if database_url:
        overrides["database_url"] = database_url
    key_file = workdir / "detector.key"
    if publish and "CHANGEGATE_SIGNING_KEY" not in os.environ and key_file.is_file():
        overrides["signing_key"] = key_file.read_text().strip()
    settings = stack.settings(workdir, DetectorSettings, **overrides)
    try:
        kind = ObjectType(object_type)
    except ValueError as exc:
        raise typer.BadParameter(f"{object_type!r}: contact or company") from exc
    signer = settings.signing("detector") if publish else None
    with _progress() as progress:
        task = progress.add_task(f"streaming the {kind.value}s", total=None)
        found, sent = asyncio.run(
            _scan(
                settings,
                kind,
                signer,
                limit,
                lambda done, total: progress.update(task, completed=done, total=total),
            )
        )
    _write_report(out, found)
    table = Table(title=f"{len(found)} duplicate clusters of {kind.value}s")
    for column in ("status", "clusters", "records", "confidence ≥ 0.99", "0.95 to 0.99", "< 0.95"):
        table.add_column(column)
    for status in ("new", "open", "decided"):
        mine = [f for f in found if f.status == status]
        if mine:
            c = [f.proposal.confidence for f in mine]
            table.add_row(
                status,
                str(len(mine)),
                str(sum(len(f.members) for f in mine)),
                str(sum(x >= 0.99 for x in c)),
                str(sum(0.95 <= x < 0.99 for x in c)),
                str(sum(x < 0.95 for x in c)),
            )
    console.print(table)
    console.print(f"report: {out}")
    if publish:
        left = sum(f.status == "new" for f in found)
        console.print(
            f"proposed {len(sent)} merges for review (highest confidence first); {left} new clusters left"
            + (f" — run again for the next {min(left, limit)}" if left else "")
        )
    else:
        console.print(
            "nothing proposed: read the report, then --publish (--max N) to send the most confident"
        )


async def _scan(
    settings: DetectorSettings,
    kind: ObjectType,
    signer: SigningKey | None,
    limit: int,
    progress: Callable[[int, int], None],
) -> tuple[list[Found], list[Proposal]]:
    from changegate.core.db import create_pool, migrate, migrate_core
    from changegate.detector import scan as scanning
    from changegate.detector.handler import Detector

    pool = await create_pool(settings.database_url, max_size=2)
    try:
        await migrate_core(pool)
        await migrate(pool, "detector", "changegate.detector.migrations")
        found = await scanning.find(pool, settings, kind, progress)
        sent = await scanning.publish(pool, Detector(pool, settings, signer), found, limit) if signer else []
    finally:
        await pool.close()
    return found, sent
