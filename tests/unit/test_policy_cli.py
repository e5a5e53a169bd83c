"""`changegate policy check | explain | simulate | sample` as a user runs them."""

from __future__ import annotations

from pathlib import Path

import pytest
from changegate.policy.cli import app
from changegate.policy.engine import DEFAULT_POLICY, Policy
from changegate.policy.samples import sample_proposals
from changegate.policy.simulate import read_proposals, simulate
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture
def proposals_file(tmp_path: Path) -> Path:
    path = tmp_path / "proposals.jsonl"
    lines = [p.model_dump_json() for p in sample_proposals(500, seed=3)]
    path.write_text("\n".join([*lines[:10], "{not json", '{"kind": "merge"}', *lines[10:]]) + "\n")
    return path


def test_check_accepts_the_default_policy() -> None:
    result = runner.invoke(app, ["check", str(DEFAULT_POLICY)])
    assert result.exit_code == 0, result.output
    assert "valid — version 2026-12-04.2, 9 rules, default review" in result.output


def test_check_refuses_an_unsafe_policy_naming_the_rule(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: x\nrules:\n  - id: yolo\n    when: {min_confidence: 0.99}\n    action: auto_apply\n"
    )
    result = runner.invoke(app, ["check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:3: rule 'yolo': would auto-apply merge, owner_reassignment" in result.output


def test_check_strict_fails_on_shadowed_rules(tmp_path: Path) -> None:
    shadowed = tmp_path / "shadowed.yaml"
    shadowed.write_text(
        "version: x\nrules:\n  - id: all\n    action: review\n  - id: never\n"
        "    when: {kind: [merge]}\n    action: review\n"
    )
    assert runner.invoke(app, ["check", str(shadowed)]).exit_code == 0
    strict = runner.invoke(app, ["check", str(shadowed), "--strict"])
    assert strict.exit_code == 1
    assert "rule 'never' can never match" in strict.output


def test_explain_names_the_rule_and_why_earlier_rules_did_not_match(tmp_path: Path) -> None:
    proposal = next(p for p in sample_proposals(50, seed=3) if p.kind.value == "email_verification")
    path = tmp_path / "p.json"
    path.write_text(proposal.model_dump_json())
    result = runner.invoke(app, ["explain", str(DEFAULT_POLICY), str(path)])
    assert result.exit_code == 0, result.output
    assert "merge-always-review: no — kind email_verification not in ['merge']" in result.output
    expected = Policy.load().evaluate(proposal)
    assert f"{expected.action.value} by rule {expected.rule_id}" in result.output


def test_explain_refuses_what_is_not_a_proposal(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"kind": "merge"}')
    result = runner.invoke(app, ["explain", str(DEFAULT_POLICY), str(path)])
    assert result.exit_code == 1
    assert "not a proposal" in result.output


def test_simulation_counts_every_route_and_the_changes(proposals_file: Path, tmp_path: Path) -> None:
    current = Policy.load()
    looser = Policy.parse(
        DEFAULT_POLICY.read_bytes().replace(
            b"previous_empty: true, min_confidence: 0.98, min_confidence_bound: 0.98",
            b"previous_empty: true, min_confidence: 0.6",
        ),
        "l",
    )
    sim = simulate(looser, read_proposals(proposals_file), current)
    expected = [looser.evaluate(p).action.value for p in sample_proposals(500, seed=3)]
    assert sim.total == 500
    assert sim.by_route == {a: expected.count(a) for a in set(expected)}
    assert sim.invalid == [
        "line 11: not a proposal (Expecting property name enclosed in double quotes: line 1 column 2"
        " (char 1))",
        "line 12: not a proposal (Field required)",
    ]
    # Lowering the fill threshold only ever moves review -> auto_apply.
    assert set(sim.transitions) <= {
        ("review", "auto_apply"),
        ("review", "review"),
        ("auto_apply", "auto_apply"),
    }
    assert sim.changed_routes == sim.transitions[("review", "auto_apply")] > 0


def test_simulate_command_prints_shares_and_changes(proposals_file: Path, tmp_path: Path) -> None:
    edited = tmp_path / "edited.yaml"
    edited.write_text(
        DEFAULT_POLICY.read_text().replace(
            "previous_empty: true, min_confidence: 0.98, min_confidence_bound: 0.98",
            "previous_empty: true, min_confidence: 0.6",
        )
    )
    result = runner.invoke(app, ["simulate", str(edited), "--from", str(proposals_file)])
    assert result.exit_code == 0, result.output
    assert "500 proposals under 2026-12-04.2" in result.output
    assert "skipped line 11: not a proposal" in result.output
    assert "change route" in result.output


def test_sample_prints_parseable_proposals() -> None:
    result = runner.invoke(app, ["sample", "--count", "5"])
    assert result.exit_code == 0
    assert len(result.output.strip().splitlines()) == 5
