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


def _start(
    workdir: Path, printed: list[str] | None = None
) -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen(
        [*CLI, "dev", "up", "--workdir", str(workdir), "--base-port", str(_free_base_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    lines = printed if printed is not None else []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("webhooks:"):  # the last line of what `dev up` prints once ready
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
    printed: list[str] = []
    proc, state = _start(workdir, printed)
    try:
        _check_the_printed_token(workdir, state)
        # Piped (a log, CI): the table keeps every path whole, nothing folded or cut with "…".
        text = "".join(printed)
        for name in ("audit", "executor", "review-api", "policy", "detector", "ingest"):
            assert str(workdir.resolve() / "logs" / f"{name}.log") in text, text
        assert "…" not in text
        _check_the_commands_find_the_stack(workdir, state)
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


def _cli(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """A command as a user beside the stack runs it: no CHANGEGATE_* variable but ``variables``,
    no terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHANGEGATE_")} | variables
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env, check=False)


def _check_the_commands_find_the_stack(workdir: Path, state: dict[str, object]) -> None:
    """Every command finds the stack (its own ports, not the defaults) through --workdir."""
    w = ["--workdir", str(workdir)]
    created = _cli("tokens", "create", "--name", "ops@example.com", "--role", "viewer", *w)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token
    listed = _cli("tokens", "list", *w)
    assert listed.returncode == 0, listed.stderr
    assert "ops@example.com" in listed.stderr
    verified = _cli("audit", "verify", *w)
    assert verified.returncode == 0, verified.stderr
    assert "chain intact" in verified.stderr
    dlq = _cli("dlq", "list", *w)
    assert dlq.returncode == 0, dlq.stderr
    assert "changegate.decisions.dlq" in dlq.stdout
    status = _cli("status", "--json", "--interval", "1", *w)
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {row["service"]: row for row in json.loads(status.stdout)}
    ports = state["ports"]
    assert isinstance(ports, dict)
    assert set(rows) == {"ingest", "detector", "policy", "review-api", "executor", "audit"}
    for name, row in rows.items():
        assert row["up"], row
        assert row["ready"], row
        assert row["url"] == f"http://127.0.0.1:{ports[name]}"
    assert rows["executor"]["breaker"] == "closed"
    assert rows["review-api"]["queue"] == 0
    plan = _cli("replay", "--from", "2000-01-01T00:00:00Z", *w)
    assert plan.returncode == 0, plan.stderr
    assert "nothing to replay" in plan.stderr  # no event came in yet
    # A variable wins over the state file; where nothing answers: a message saying so, no traceback.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    nowhere = _cli(
        "tokens", "list", *w, CHANGEGATE_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed}/postgres"
    )
    assert nowhere.returncode == 2
    assert "no database at" in nowhere.stderr
    assert "Traceback" not in nowhere.stderr


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
