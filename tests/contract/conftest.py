"""Fixtures for the contract tests: where the shared specifications live."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SPECS_DIR_ENV = "CHANGEGATE_SPECS_DIR"

SpecFile = Callable[[str], Path]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the directory holding docker-compose.yml)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def specs_dir() -> Path:
    """The shared specs: ``$CHANGEGATE_SPECS_DIR``, else ``<repo root>/../shared/specs``."""
    configured = os.environ.get(SPECS_DIR_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "specs").resolve()


@pytest.fixture(scope="session")
def spec_file(specs_dir: Path) -> SpecFile:
    """``spec_file("compose/compose-spec.json")``: a spec's path; skips the test if absent."""

    def resolve(relative: str) -> Path:
        path = specs_dir / relative
        if not path.is_file():
            pytest.skip(
                f"spec file {relative!r} not found at {path}; "
                f"set {SPECS_DIR_ENV} to the directory that holds it"
            )
        return path

    return resolve
