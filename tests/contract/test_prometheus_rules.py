"""The Prometheus rules (deploy/prometheus/rules): promtool checks them and runs their fixtures
(tests/prometheus/*.yml: series that fire each alert and series that leave it silent), and every
alert has its section in docs/runbook.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from metrics_catalog import series_names
from ops_tools import prometheus_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = REPO_ROOT / "deploy" / "prometheus" / "rules"
FIXTURES = sorted((REPO_ROOT / "tests" / "prometheus").glob("*.yml"))
RUNBOOK = REPO_ROOT / "docs" / "runbook.md"


def rule_files() -> list[Path]:
    files = sorted(RULES_DIR.glob("*.yml"))
    assert files, "deploy/prometheus/rules holds no rule file"
    return files


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in rule_files()
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def run(tool: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )


def test_promtool_checks_the_rules() -> None:
    result = run(prometheus_tool("promtool"), "check", "rules", *rule_files())
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_runs_the_fixtures() -> None:
    assert FIXTURES, "tests/prometheus holds no promtool fixture"
    result = run(prometheus_tool("promtool"), "test", "rules", *FIXTURES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_fixtures_that_fire_it_and_that_leave_it_silent() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for path in FIXTURES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fired == set(), f"never made to fire: {sorted(names - fired)}"
    # A pair of alerts on one SLO share their silent fixture; each other alert has its own.
    assert names - silent == set(), f"never checked silent: {sorted(names - silent)}"


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule.get("alert") or rule["record"])
def test_every_rule_names_metrics_that_exist(rule: dict[str, Any]) -> None:
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(rule["expr"]), visit)
    assert names, "selects no metric"
    unknown = names - series_names()
    assert not unknown, f"no service defines {sorted(unknown)}"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as dashes."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


@pytest.mark.parametrize("alert", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_points_to_its_runbook_section(alert: dict[str, Any]) -> None:
    annotations = alert.get("annotations", {})
    url = annotations.get("runbook_url", "")
    path, _, anchor = url.partition("#")
    assert path == "docs/runbook.md", f"{alert['alert']}: runbook_url {url!r} is not docs/runbook.md#…"
    text = RUNBOOK.read_text(encoding="utf-8")
    assert anchor in _anchors(text), f"{alert['alert']}: docs/runbook.md has no section #{anchor}"
    assert alert["alert"] in text
    assert annotations.get("summary"), f"{alert['alert']} has no summary"
    assert alert.get("labels", {}).get("severity") in {"page", "ticket"}


def test_a_broken_rule_file_is_refused(tmp_path: Path) -> None:
    """The check can fail: a rule with PromQL that does not parse is refused by name."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: sum(rate(x[5m])\n")
    result = run(prometheus_tool("promtool"), "check", "rules", bad)
    assert result.returncode != 0
    assert "parse error" in (result.stdout + result.stderr)
