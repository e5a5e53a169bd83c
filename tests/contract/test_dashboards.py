"""The Grafana dashboards (deploy/grafana/dashboards): valid JSON that Compose provisions, each
panel's PromQL parses, and names only metrics the services define (or our recording rules)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from metrics_catalog import series_names

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO_ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
PROVIDER = REPO_ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "changegate.yml"
# Grafana's variables, as Prometheus would see them once Grafana substituted them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [p for p in found if p.get("type") != "row"]


def queries() -> list[tuple[str, str]]:
    return [
        (f"{path.name}: {panel['title']} {target['refId']}", target["expr"])
        for path in DASHBOARDS
        for panel in panels(json.loads(path.read_text(encoding="utf-8")))
        for target in panel["targets"]
    ]


def promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable nobody substitutes: {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(promql(expr)), visit)
    return names


def test_there_is_a_dashboard_with_panels_that_query() -> None:
    assert DASHBOARDS, "deploy/grafana/dashboards holds no dashboard"
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        assert dashboard["uid"], f"{path.name} has no uid"
        assert dashboard["title"], f"{path.name} has no title"
        assert panels(dashboard), f"{path.name} has no panel"
        for panel in panels(dashboard):
            assert panel["targets"], f"{path.name}: panel {panel['title']!r} queries nothing"
            assert panel["datasource"]["uid"] == "prometheus", "the provisioned datasource's uid"
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"


@pytest.mark.parametrize(("where", "expr"), queries(), ids=[w for w, _ in queries()])
def test_every_query_parses_and_names_metrics_that_exist(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: selects no metric"
    unknown = names - series_names()
    assert not unknown, f"{where}: no service defines {sorted(unknown)}"


def test_the_check_can_fail() -> None:
    with pytest.raises(ValueError, match="parenthesis"):
        promql_parser.parse(promql("sum(rate(changegate_retries_total[$__rate_interval])"))
    assert metric_names("rate(changegate_nonexistent_total[5m])") - series_names() == {
        "changegate_nonexistent_total"
    }


def test_compose_provisions_the_dashboards() -> None:
    provider = yaml.safe_load(PROVIDER.read_text())["providers"][0]
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    mounts = [str(v) for v in compose["services"]["grafana"]["volumes"]]
    wanted = f"./deploy/grafana/dashboards:{provider['options']['path']}:ro"
    assert wanted in mounts, f"grafana does not mount the dashboards where the provider reads: {wanted}"
    assert any(m.startswith("./deploy/grafana/provisioning:/etc/grafana/provisioning") for m in mounts)


def test_the_runbook_names_the_dashboard_rows() -> None:
    text = (REPO_ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text(encoding="utf-8"))["panels"]:
            if panel.get("type") == "row":
                title = re.split(r"[:,]", panel["title"])[0]
                assert f"*{title}*" in text, f"the runbook never mentions row {title!r}"


def test_the_readme_shows_the_dashboard_picture() -> None:
    """docs/dashboard.png (bench/dashboard_picture.py draws it from a run) is a PNG the README
    shows, drawn from the panels of a dashboard that is there."""
    picture = REPO_ROOT / "docs" / "dashboard.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](docs/dashboard.png)" in (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    script = (REPO_ROOT / "bench" / "dashboard_picture.py").read_text(encoding="utf-8")
    drawn = re.search(r'"deploy" / "grafana" / "dashboards" / "([\w.-]+)"', script)
    assert drawn is not None
    assert drawn.group(1) in {path.name for path in DASHBOARDS}
