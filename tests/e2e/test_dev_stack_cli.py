"""`changegate dev up` / `dev down` as a user runs them: everything it starts, it stops."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

CLI = [sys.executable, "-m", "changegate.cli"]


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Not under pytest's basetemp: any pytest run starting meanwhile makes that 0700 again, and
    the embedded PostgreSQL's own system user could no longer reach its data directory."""
    path = Path(tempfile.mkdtemp(prefix="changegate-devstack-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _free_base_port() -> int:
    """Seven consecutive free ports (broker and six services)."""
    for base in range(21000 + os.getpid() % 1000 * 20, 65000, 20):
        try:
            for p in range(base, base + 7):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


def _start(workdir: Path) -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen(
        [*CLI, "dev", "up", "--workdir", str(workdir), "--base-port", str(_free_base_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        if "dev stack ready" in line:
            break
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("dev up did not get ready:\n" + "".join(lines))
    if not (workdir / "state.json").exists():  # it printed, then stopped what it started
        proc.wait(60)
        pytest.fail("dev up stopped after it was ready:\n" + "".join(lines) + proc.stdout.read())
    state: dict[str, object] = json.loads((workdir / "state.json").read_text())
    return proc, state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): count it as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _assert_all_gone(state: dict[str, object], workdir: Path) -> None:
    pids = state["pids"]
    assert isinstance(pids, dict)
    assert set(pids) == {"broker", "audit", "executor", "review-api", "policy", "detector", "ingest"}
    left = {name: pid for name, pid in pids.items() if _alive(pid)}
    assert left == {}, f"left running: {left}"
    assert not (workdir / "pgdata" / "postmaster.pid").exists(), "PostgreSQL still runs"
    assert not (workdir / "state.json").exists()
    assert not (workdir / "token").exists()
    assert not (workdir / "ingest.json").exists()


def test_the_printed_token_works_as_the_readme_says_and_ctrl_c_stops_everything(workdir: Path) -> None:
    proc, state = _start(workdir)
    try:
        _check_the_printed_token(workdir, state)
    except BaseException:
        proc.send_signal(signal.SIGINT)  # whatever failed, leave nothing running
        proc.wait(60)
        raise
    # The terminal went away (its end of the pipe is closed): Ctrl-C must still stop everything.
    assert proc.stdout is not None
    proc.stdout.close()
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    _assert_all_gone(state, workdir)


def _check_the_printed_token(workdir: Path, state: dict[str, object]) -> None:
    token = (workdir / "token").read_text().strip()
    ports = state["ports"]
    assert isinstance(ports, dict)
    with httpx.Client(timeout=10) as client:
        for url in (
            f"http://127.0.0.1:{ports['review-api']}/v1/proposals",
            f"http://127.0.0.1:{ports['audit']}/audit/entries?limit=5",
            f"http://127.0.0.1:{ports['audit']}/audit/verify",
        ):
            assert client.get(url).status_code == 401
            assert client.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200, url


def test_dev_down_stops_everything(workdir: Path) -> None:
    proc, state = _start(workdir)
    down = subprocess.run(
        [*CLI, "dev", "down", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert down.returncode == 0, down.stderr
    assert proc.wait(30) == 0
    _assert_all_gone(state, workdir)
    again = subprocess.run(
        [*CLI, "dev", "down", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "no dev stack runs" in again.stderr
