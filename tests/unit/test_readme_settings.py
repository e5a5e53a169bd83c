"""The README's configuration table names every setting a service or command reads: a setting
added without a row (the HubSpot base URL was one) fails here, naming it."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from pydantic_settings import BaseSettings

README = Path(__file__).resolve().parents[2] / "README.md"
MODULES = [
    "changegate.core.settings",
    "changegate.detector.settings",
    "changegate.policy.settings",
    "changegate.executor.settings",
    "changegate.audit.settings",
    "changegate.review_api.settings",
    "changegate.ingest.settings",
    "changegate.cli.crm",
]


def _configuration_table() -> str:
    text = README.read_text()
    return text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]


def _variables() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseSettings) and value.__module__ == name:
                prefix = str(value.model_config.get("env_prefix", ""))
                for field in value.model_fields:
                    found.setdefault(f"{prefix}{field}".upper(), f"{name}.{value.__name__}")
    return found


def test_every_setting_has_a_row_in_the_configuration_table() -> None:
    table = _configuration_table()
    named = set(re.findall(r"`(CHANGEGATE_[A-Z0-9_]+)`", table))
    variables = _variables()
    assert len(variables) > 60  # the settings classes were found
    missing = {v: where for v, where in variables.items() if v not in named}
    assert missing == {}
