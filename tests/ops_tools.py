"""Where the tests find Prometheus' own tools (promtool, the server): Debian's `prometheus` package
extracted by `make prometheus-tools` into .cache/prometheus, or on PATH. CI must have them (its
tests fail without); elsewhere the tests that need them skip, saying how to get them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_BIN = REPO_ROOT / ".cache" / "prometheus" / "usr" / "bin"


def prometheus_tool(name: str) -> Path:
    """``promtool`` or ``prometheus``; fails in CI and skips elsewhere when neither place has it."""
    for candidate in (CACHE_BIN / name, shutil.which(name)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    message = (
        f"{name} not found in {CACHE_BIN.relative_to(REPO_ROOT)} nor on PATH: run `make prometheus-tools`"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
