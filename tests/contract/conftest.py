"""Fixtures for the contract tests (where the shared specifications live: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the directory holding docker-compose.yml)."""
    return REPO_ROOT
