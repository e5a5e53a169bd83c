"""What metric names exist: every family the services register (their modules imported into one
registry) with the sample names Prometheus sees (``_total``, ``_bucket``, …), and the recording
rules of deploy/prometheus/rules. Dashboards and alerts may name only these."""

from __future__ import annotations

import importlib
from functools import cache
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

REPO_ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = REPO_ROOT / "deploy" / "prometheus" / "rules"
# Every module that defines metrics is imported by one of these (each service's entrypoint).
SERVICE_MODULES = (
    "changegate.core.service",
    "changegate.detector.app",
    "changegate.policy.app",
    "changegate.review_api.app",
    "changegate.executor.app",
    "changegate.audit.app",
    "changegate.ingest.app",
)
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "gauge": ("",),
    "stateset": ("",),
    "enum": ("",),
    "unknown": ("",),
}
# Prometheus' own series, always there beside ours.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


@cache
def families() -> dict[str, str]:
    """Family name -> type, of every changegate metric the services define."""
    for module in SERVICE_MODULES:
        importlib.import_module(module)
    return {m.name: m.type for m in REGISTRY.collect() if m.name.startswith("changegate_")}


@cache
def recording_rules() -> frozenset[str]:
    return frozenset(
        rule["record"]
        for path in RULES_DIR.glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    )


@cache
def series_names() -> frozenset[str]:
    """Every name a PromQL selector may use."""
    names = {name + suffix for name, kind in families().items() for suffix in SUFFIXES[kind]}
    return frozenset(names | recording_rules() | PROMETHEUS_SERIES)
