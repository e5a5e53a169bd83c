"""`changegate dev up --crm`: the sandbox by default; HubSpot only with a token, and never the demo."""

from __future__ import annotations

from pathlib import Path

import pytest
from changegate.cli.main import app
from typer.testing import CliRunner

runner = CliRunner()


def test_hubspot_without_a_token_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHANGEGATE_HUBSPOT_TOKEN", raising=False)
    result = runner.invoke(app, ["dev", "up", "--crm", "hubspot", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "CHANGEGATE_HUBSPOT_TOKEN" in result.output
    assert list(tmp_path.iterdir()) == []  # no broker, no database, no state file


def test_the_demo_never_writes_to_a_real_portal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHANGEGATE_HUBSPOT_TOKEN", "pat-na1-test")
    result = runner.invoke(app, ["dev", "up", "--crm", "hubspot", "--demo", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--crm hubspot-sim" in result.output
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_crm_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["dev", "up", "--crm", "salesforce", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "salesforce" in result.output


def test_demo_feed_refuses_a_stack_that_writes_to_a_real_portal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`demo feed` printed "auto-applied" while every execution failed in a real portal."""
    monkeypatch.setenv("CHANGEGATE_CRM", "hubspot")
    monkeypatch.setenv(
        "CHANGEGATE_HUBSPOT_BASE_URL", "http://127.0.0.1:9"
    )  # nothing answers: not a simulator
    result = runner.invoke(app, ["demo", "feed", "--count", "1", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "real portal" in result.output


def test_demo_feed_refuses_a_dev_stack_that_runs_on_hubspot(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"crm": "hubspot", "ports": {}}')
    result = runner.invoke(app, ["demo", "feed", "--count", "1", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "real portal" in result.output
