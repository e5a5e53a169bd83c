"""The policy docs/hubspot.md starts a new portal with is valid, and under it nothing applies by
itself: every sample proposal is routed to review."""

from __future__ import annotations

from pathlib import Path

from changegate.cli.main import app
from changegate.policy.loader import parse_document
from typer.testing import CliRunner

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "review-only-policy.yaml"


def test_the_review_only_policy_passes_the_check() -> None:
    result = CliRunner().invoke(app, ["policy", "check", str(EXAMPLE)])
    assert result.exit_code == 0, result.output


def test_under_the_review_only_policy_nothing_applies_by_itself() -> None:
    policy = parse_document(EXAMPLE.read_bytes(), str(EXAMPLE))
    assert [r.action.value for r in policy.rules] == ["review"] * len(policy.rules)
    assert policy.default.value == "review"
