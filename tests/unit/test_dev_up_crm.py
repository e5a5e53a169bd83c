"""`changegate dev up --crm`: the sandbox by default; HubSpot only with a token, and never the demo."""

from __future__ import annotations

import json
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


def test_an_import_takes_a_running_dev_stacks_database_topics_and_simulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from changegate.cli.crm import ImportSettings, _from_stack

    for name in ("CHANGEGATE_DATABASE_URL", "CHANGEGATE_TOPIC_PREFIX", "CHANGEGATE_CRM"):
        monkeypatch.delenv(name, raising=False)
    state = {
        "database_url": "postgresql://stack@127.0.0.1:5999/changegate",
        "kafka": "127.0.0.1:9999",
        "topic_prefix": "trial.",
        "crm": "hubspot-sim",
        "crm_url": "http://127.0.0.1:8999",
    }
    (tmp_path / "state.json").write_text(json.dumps(state))
    settings = ImportSettings(**_from_stack(tmp_path))
    assert (settings.database_url, settings.topic_prefix) == (state["database_url"], "trial.")
    assert (settings.crm, settings.hubspot_base_url) == ("hubspot", "http://127.0.0.1:8999")
    # What the operator sets wins over the stack's file.
    monkeypatch.setenv("CHANGEGATE_TOPIC_PREFIX", "mine.")
    assert ImportSettings(**_from_stack(tmp_path)).topic_prefix == "mine."
