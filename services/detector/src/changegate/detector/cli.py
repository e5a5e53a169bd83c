"""`changegate detector …`: train the duplicate finder's model on a CRM snapshot."""

from __future__ import annotations

import asyncio
import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

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

app = typer.Typer(help="The duplicate finder: train its model on your own records.", no_args_is_help=True)
console = log_friendly(Console(stderr=True, soft_wrap=True))

ID_FIELDS = ("record_id", "hs_object_id", "id")
Snapshot = list[tuple[str, dict[str, Any]]]


class SnapshotError(ValueError):
    """A snapshot that cannot be read, with the reason (file and line)."""


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
    for problem in problems[:20]:
        console.print(f"[yellow]skipped[/] {problem}")
    if len(problems) > 20:
        console.print(f"[yellow]… and {len(problems) - 20} more unusable lines[/]")
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
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
