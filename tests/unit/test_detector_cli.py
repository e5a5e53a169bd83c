"""`changegate detector train` on exported snapshots (files only: no database)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from changegate.cli.main import app
from changegate.core.contracts import Decider, Decision, DecisionOutcome, Proposal
from changegate.core.contracts.envelope import make_envelope
from changegate.detector import reliability
from changegate.detector.cli import SnapshotError, read_csv, read_jsonl, read_pairs
from changegate.detector.matching.model import load_model
from changegate.detector.settings import DetectorSettings
from typer.testing import CliRunner

PEOPLE = [
    {
        "firstname": first,
        "lastname": last,
        "zip": str(1000 + i % 40),
        "address": f"{i} {last} st",
        "city": "x",
    }
    for i, (first, last) in enumerate((f"first{i % 50}", f"last{i % 70}") for i in range(600))
]


def test_jsonl_records_with_or_without_a_properties_object(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(
        '{"record_id": "a", "properties": {"firstname": "Ann"}}\n'
        '{"hs_object_id": 7, "firstname": "Bob"}\n'
        "\n"
        "not json\n"
        "[1, 2]\n"
        '{"properties": "nope"}\n'
        '{"lastname": "Lee"}\n'
    )
    problems: list[str] = []
    records = list(read_jsonl(path, problems))
    assert records == [
        ("a", {"firstname": "Ann"}),
        ("7", {"hs_object_id": 7, "firstname": "Bob"}),
        ("line-7", {"lastname": "Lee"}),
    ]
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in problems] == ["4", "5", "6"]


def test_csv_records(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("\ufeffid,firstname,lastname\n11,Ann,Lee\n,Bob,Roe\n")
    assert list(read_csv(path)) == [
        ("11", {"id": "11", "firstname": "Ann", "lastname": "Lee"}),
        ("row-3", {"id": "", "firstname": "Bob", "lastname": "Roe"}),
    ]


def test_labelled_pairs(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text('record_id_l,record_id_r\na,b\n{"l": "c", "r": "d"}\n["e", "f"]\n')
    assert read_pairs(path) == [("a", "b"), ("c", "d"), ("e", "f")]
    path.write_text("a\n")
    with pytest.raises(SnapshotError, match=r"p\.csv:1: expected two record ids"):
        read_pairs(path)
    path.write_text("{oops\n")
    with pytest.raises(SnapshotError, match=r"p\.csv:1: not JSON"):
        read_pairs(path)


def test_train_from_a_csv_export_writes_a_model_the_detector_loads(tmp_path: Path) -> None:
    snapshot = tmp_path / "contacts.csv"
    with snapshot.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["record_id", *PEOPLE[0]])
        writer.writeheader()
        for i, person in enumerate(PEOPLE):
            writer.writerow({"record_id": f"r{i}", **person})
            if i % 3 == 0:  # a duplicate with a typo in the street
                writer.writerow({"record_id": f"d{i}", **person, "address": f"{i} {person['lastname']} sr"})
    labels = tmp_path / "merges.csv"
    labels.write_text("r0,d0\nr3,d3\nr1,missing\n")
    out = tmp_path / "model.json"
    result = CliRunner().invoke(
        app,
        [
            "detector",
            "train",
            "--csv",
            str(snapshot),
            "--out",
            str(out),
            "--u-pairs",
            "20000",
            "--labels",
            str(labels),
            "--model-version",
            "test-1",
        ],
    )
    assert result.exit_code == 0, result.output
    model = load_model(out)
    assert model.model_version == "test-1"
    assert model.training["records"] == len(PEOPLE) + 200
    assert "check against 2 labelled pairs (of 3)" in result.output
    assert json.loads(out.read_text())["format"] == "changegate-match-model/1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jsonl", "a.jsonl", "--csv", "b.csv"], "not both"),
        (["--jsonl", "missing.jsonl"], "cannot read the snapshot"),
    ],
)
def test_train_refuses_bad_input_clearly(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["detector", "train", "--out", str(tmp_path / "m.json"), *args])
    assert result.exit_code != 0
    assert message in result.output


def test_train_refuses_a_snapshot_of_one_record(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text('{"firstname": "Ann"}\n')
    result = CliRunner().invoke(
        app, ["detector", "train", "--jsonl", str(path), "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 2
    assert "fewer than two records" in result.output


def test_a_missing_model_file_is_refused_at_start(tmp_path: Path) -> None:
    from changegate.detector.settings import DetectorSettings
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="match_model"):
        DetectorSettings(match_model=tmp_path / "nope.json")
    model = tmp_path / "m.json"
    load_model().save(model)
    assert DetectorSettings(match_model=model).match_model == model


def test_calibrate_learns_a_table_from_human_decisions_the_detector_loads(
    tmp_path: Path, make_proposal: Callable[..., Proposal], make_decision: Callable[..., Decision]
) -> None:
    cell = "verification|zerobounce|valid"
    proposal = make_proposal(
        evidence={
            reliability.BASIS: reliability.basis(
                [reliability.Cell(cell, "jobtitle")], 0.95, reliability.PriorFrom.CONFIGURED
            )
        }
    )
    human = Decider(kind="human", identity="alice@example.com")
    approved = make_decision(proposal, DecisionOutcome.APPROVED, decided_by=human)
    rejected = make_decision(proposal, DecisionOutcome.REJECTED, decided_by=human)
    automatic = make_decision(proposal, DecisionOutcome.AUTO_APPROVED)  # says nothing
    lines = [
        approved.model_dump_json(),
        make_envelope(approved, service="review-api").model_dump_json(),
        rejected.model_dump_json(),
        automatic.model_dump_json(),
        "{not json",
        '{"outcome": "approved"}',
    ]
    source = tmp_path / "decisions.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "reliability.json"
    result = CliRunner().invoke(
        app, ["detector", "calibrate", "--from", str(source), "--out", str(out), "--version", "v7"]
    )
    assert result.exit_code == 0, result.output
    assert "decisions.jsonl:5: not JSON" in result.output
    assert "decisions.jsonl:6: not a decision" in result.output
    table = reliability.load(out)
    assert (table.version, table.prior_weight, table.prior_cap, table.level) == ("v7", 20.0, 0.9, 0.95)
    assert table.cells == {cell: reliability.CellCounts(approved=2, corrected=1)}
    assert table.learned_from == "3 human decisions of 4 read from decisions.jsonl"
    assert DetectorSettings(reliability_file=out).reliability_file == out
    stricter = CliRunner().invoke(
        app, ["detector", "calibrate", "--from", str(source), "--out", str(out), "--level", "0.99"]
    )
    assert stricter.exit_code == 0, stricter.output
    assert reliability.load(out).level == 0.99


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ([], "give --from FILE or --from-database"),
        (["--from", "DECISIONS", "--from-database"], "give --from FILE or --from-database"),
        (["--from", "DECISIONS", "--database-url", "postgresql://x/y"], "only with --from-database"),
    ],
)
def test_calibrate_reads_decisions_from_one_place(tmp_path: Path, given: list[str], message: str) -> None:
    source = tmp_path / "decisions.jsonl"
    source.write_text("")
    args = [str(source) if a == "DECISIONS" else a for a in given]
    out = tmp_path / "reliability.json"
    result = CliRunner().invoke(app, ["detector", "calibrate", *args, "--out", str(out)])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not out.exists()
