"""`changegate dev up`: broker, PostgreSQL and every service as processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING

import httpx
from changegate.cli.embedded import EmbeddedBroker, EmbeddedPostgres, stop_postgres
from changegate.cli.migrate import migrate_all
from changegate.cli.webhooks import HUBSPOT_SECRET_VARIABLE, IngestTarget
from changegate.core.auth.principal import Role
from changegate.core.auth.tokens import create_token
from changegate.core.db import create_pool
from changegate.core.kafka import ensure_topics
from changegate.core.roles import ROLES, role_dsn
from changegate.core.settings import CommonSettings
from changegate.core.signing import dev_keys

if TYPE_CHECKING:
    from changegate.cli.demo_feed import CrmTarget

# service name -> module, in start order (migrations: changegate.cli.migrate.COMPONENTS)
SERVICES: dict[str, str] = {
    "audit": "changegate.audit",
    "executor": "changegate.executor",
    "review-api": "changegate.review_api",
    "policy": "changegate.policy",
    "detector": "changegate.detector",
    "ingest": "changegate.ingest",
}
DEV_IDENTITY = "dev-reviewer@changegate.local"
DEFAULT_PORTS = {
    "broker": 19092,
    "review-api": 8000,
    "audit": 8001,
    "detector": 8002,
    "policy": 8003,
    "executor": 8004,
    "ingest": 8005,
    "hubspot-sim": 8006,  # only with --crm hubspot-sim
}
SIMULATOR = "hubspot-sim"


@dataclass
class ServiceProcess:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class DevStack:
    """Starts and stops the embedded stack. ``workdir`` holds the data, logs and the state file."""

    workdir: Path
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    topic_prefix: str = "changegate."
    extra_env: dict[str, str] = field(default_factory=dict)
    kafka: str | None = None  # an external broker instead of the embedded one
    database_url: str | None = None  # an external PostgreSQL instead of the embedded one
    on_step: Callable[[str], None] = lambda _: None
    # API tokens created at start (name -> role); their tokens are in ``issued`` once started.
    tokens: dict[str, Role] = field(default_factory=lambda: {DEV_IDENTITY: Role.ADMIN})
    # Where approved changes go: "sandbox" and "hubspot" as the executor's CHANGEGATE_CRM (in
    # ``extra_env``), or "hubspot-sim": the stack starts the HubSpot simulator and points the
    # executor (writes) and ingest (the simulator's signed webhooks) at it.
    crm: str = "sandbox"
    sim_contacts: int = 2000  # the simulator's seeded population

    def __post_init__(self) -> None:
        self.logs = self.workdir / "logs"
        self.state_file = self.workdir / "state.json"
        self.broker: EmbeddedBroker | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.services: dict[str, ServiceProcess] = {}
        self.issued: dict[str, str] = {}
        self.role_passwords = {service: secrets.token_urlsafe(16) for service in ROLES}
        # This stack's own signing keys: each signing service gets its own, everyone trusts all.
        self.signing_keys, self.trusted_keys = dev_keys(uuid.uuid4().hex[:8])
        # Ingest's webhook secrets, made anew for each stack: HubSpot's app secret and each
        # shipped source's (kept in <workdir>/ingest.json while it runs, for `demo feed`).
        self.ingest_secrets = {v: secrets.token_urlsafe(24) for v in _ingest_secret_variables()}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 120) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._write_state()
        if self.kafka is None:
            self.on_step("starting the Tansu broker")
            self.broker = EmbeddedBroker(self.ports["broker"], self.logs / "broker.log")
            self.kafka = self.broker.start()
        if self.database_url is None:
            self.on_step("starting PostgreSQL")
            self.postgres = EmbeddedPostgres(self.workdir / "pgdata")
            self.database_url = self.postgres.start()
        self._write_state()
        self.on_step("creating topics and migrating")
        asyncio.run(self._prepare())
        if self.crm == SIMULATOR:
            self.on_step(f"starting the HubSpot simulator ({self.sim_contacts} contacts)")
            self._spawn_simulator()
        for name in SERVICES:
            self.on_step(f"starting {name}")
            self._spawn(name)
        self._write_state()
        self.wait_ready(timeout)
        if "ingest" in self.services:
            self.ingest_target().save(self.ingest_file)
        # `changegate detector scan --publish` signs as the detector of this stack.
        self.detector_key_file.touch(mode=0o600, exist_ok=True)
        self.detector_key_file.write_text(self.signing_keys["detector"] + "\n")

    @property
    def detector_key_file(self) -> Path:
        return self.workdir / "detector.key"

    @property
    def ingest_file(self) -> Path:
        """Where `demo feed` finds this stack's ingest URL and webhook secrets."""
        return self.workdir / "ingest.json"

    def ingest_target(self) -> IngestTarget:
        return IngestTarget(f"http://127.0.0.1:{self.ports['ingest']}", dict(self.ingest_secrets))

    @property
    def simulator_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[SIMULATOR]}"

    def crm_target(self) -> CrmTarget:
        """What the demo feed plays against."""
        from changegate.cli.demo_feed import CrmTarget

        return CrmTarget(self.crm, self.simulator_url if self.crm == SIMULATOR else None)

    def _crm_env(self, name: str) -> dict[str, str]:
        """The executor writes to the simulator with its private app's token; ingest marks that
        app's changes as echo (HubSpot reports them with the app's id as sourceId)."""
        if self.crm != SIMULATOR:
            return {}
        from changegate.hubspot_sim import APP_ID, TOKEN

        if name == "executor":
            return {
                "CHANGEGATE_CRM": "hubspot",
                "CHANGEGATE_HUBSPOT_BASE_URL": self.simulator_url,
                "CHANGEGATE_HUBSPOT_TOKEN": TOKEN,
            }
        if name == "ingest":
            return {"CHANGEGATE_HUBSPOT_ECHO_SOURCE_IDS": json.dumps([str(APP_ID)])}
        return {}

    def _spawn_simulator(self) -> None:
        """The simulator as a process of the stack, seeded, reporting changes to ingest signed with
        the secret ingest checks HubSpot's signatures with."""
        from changegate.hubspot_sim.__main__ import SECRET_ENV

        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CHANGEGATE_") or k == "CHANGEGATE_SPECS_DIR"
        }
        env[SECRET_ENV] = self.ingest_secrets[HUBSPOT_SECRET_VARIABLE]
        args = [
            "--port", str(self.ports[SIMULATOR]),
            "--webhook-url", f"{self.ingest_target().url}/v1/webhooks/hubspot",
            "--webhook-properties", ",".join(_subscribed_properties()),
            "--seed-contacts", str(self.sim_contacts),
        ]  # fmt: skip
        self._spawn(SIMULATOR, "changegate.hubspot_sim", args, env)

    async def _prepare(self) -> None:
        """Topics; migrations as the owner, then each service's own least-privileged role; tokens."""
        settings = self.settings()
        await ensure_topics(settings)
        await migrate_all(settings, roles=True, passwords=self.role_passwords)
        pool = await create_pool(settings.database_url)
        try:
            for name, role in self.tokens.items():
                _, self.issued[name] = await create_token(
                    pool, name, role, created_by="changegate dev up", expires_in=timedelta(days=7)
                )
        finally:
            await pool.close()

    def settings(self) -> CommonSettings:
        assert self.kafka is not None
        assert self.database_url is not None
        return CommonSettings(
            kafka_bootstrap_servers=self.kafka,
            database_url=self.database_url,
            topic_prefix=self.topic_prefix,
        )

    def env(self, name: str) -> dict[str, str]:
        assert self.kafka is not None
        assert self.database_url is not None
        # Each service as its own role, on a schema `changegate migrate` brought up to date; a
        # service without a role (ingest) gets no DSN at all, not even one inherited from here.
        inherited = {k: v for k, v in os.environ.items() if k != "CHANGEGATE_DATABASE_URL"}
        database = (
            {"CHANGEGATE_DATABASE_URL": role_dsn(self.database_url, name, self.role_passwords[name])}
            if name in ROLES
            else {}
        )
        return {
            **inherited,
            "CHANGEGATE_KAFKA_BOOTSTRAP_SERVERS": self.kafka,
            **database,
            "CHANGEGATE_MIGRATE_ON_START": "false",
            "CHANGEGATE_TOPIC_PREFIX": self.topic_prefix,
            "CHANGEGATE_HTTP_HOST": "127.0.0.1",
            "CHANGEGATE_HTTP_PORT": str(self.ports[name]),
            "CHANGEGATE_AUTH_API_TOKENS": "true",
            "CHANGEGATE_TRUSTED_KEYS": json.dumps({k: t.model_dump() for k, t in self.trusted_keys.items()}),
            **({"CHANGEGATE_SIGNING_KEY": self.signing_keys[name]} if name in self.signing_keys else {}),
            **(self.ingest_secrets if name == "ingest" else {}),
            **self.extra_env,
            **self._crm_env(name),
        }

    def _spawn(
        self,
        name: str,
        module: str | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        log_path = self.logs / f"{name}.log"
        log_file = log_path.open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", module or SERVICES[name], *(args or [])],
            env=self.env(name) if env is None else env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # the supervisor stops services in order, not the terminal
        )
        self.services[name] = ServiceProcess(name, self.ports[name], proc, log_path, log_file)

    def restart(self, name: str, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        """Stop one service (SIGKILL simulates a crash) and start it again; wait until ready."""
        self._stop_service(self.services[name], sig)
        self._spawn(name)
        self._write_state()
        self.wait_ready(timeout, only=[name])

    def wait_ready(self, timeout: float, only: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(only or self.services)
        with httpx.Client(timeout=1.0) as client:
            while waiting:
                for name in sorted(waiting):
                    svc = self.services[name]
                    if svc.proc.poll() is not None:
                        raise RuntimeError(
                            f"{name} exited with {svc.proc.returncode}; last log lines:\n{svc.tail()}"
                        )
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(f"http://127.0.0.1:{svc.port}/readyz").status_code == 200:
                            waiting.discard(name)
                            self.on_step(f"{name} ready on :{svc.port}")
                if time.monotonic() > deadline:
                    tails = "\n".join(f"--- {n}\n{self.services[n].tail()}" for n in sorted(waiting))
                    raise TimeoutError(f"not ready after {timeout:.0f}s: {sorted(waiting)}\n{tails}")
                if waiting:
                    time.sleep(0.1)

    def stop(self) -> None:
        """Stop services (reverse start order), then the broker, then PostgreSQL."""
        for svc in reversed(list(self.services.values())):
            self._stop_service(svc)
        self.services.clear()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        (self.workdir / "token").unlink(missing_ok=True)
        self.ingest_file.unlink(missing_ok=True)
        self.detector_key_file.unlink(missing_ok=True)

    @staticmethod
    def _stop_service(svc: ServiceProcess, sig: int = signal.SIGTERM) -> None:
        if svc.proc.poll() is None:
            svc.proc.send_signal(sig)
            try:
                svc.proc.wait(20)
            except subprocess.TimeoutExpired:
                svc.proc.kill()
                svc.proc.wait()
        svc.log_file.close()

    # -- state file: lets `changegate dev down` find what `dev up` started -------------------
    def _write_state(self) -> None:
        state = {
            "supervisor_pid": os.getpid(),
            "kafka": self.kafka,
            "topic_prefix": self.topic_prefix,
            "database_url": self.database_url,
            "pgdata": str(self.workdir / "pgdata") if self.postgres else None,
            "pids": {n: s.proc.pid for n, s in self.services.items()}
            | ({"broker": self.broker.proc.pid} if self.broker and self.broker.proc else {}),
            "ports": self.ports,
            "crm": self.crm,
            "crm_url": self.simulator_url if self.crm == SIMULATOR else None,
        }
        # It names the owner's DSN: readable by its user only.
        self.state_file.touch(mode=0o600, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2))


def _subscribed_properties() -> list[str]:
    """The properties whose changes the simulator reports: those the detectors read (a HubSpot app
    subscribes to property changes one property at a time, and the guide lists the same ones)."""
    from changegate.detector.settings import DetectorSettings

    return DetectorSettings().record_properties()


def _ingest_secret_variables() -> list[str]:
    """HubSpot's and every shipped source's secret variable (none without the ingest package)."""
    try:
        from changegate.ingest.sources import shipped_secret_variables
    except ImportError:
        return []
    return [HUBSPOT_SECRET_VARIABLE, *shipped_secret_variables()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited process its parent has not reaped yet (a zombie) is gone for us
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _ours(pid: int) -> bool:
    """Only a process whose command line is one we start (pids are reused after a crash)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return _alive(pid)  # no /proc: trust the state file
    return b"changegate" in cmdline or b"tansu" in cmdline


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return not _alive(pid)


def down(workdir: Path, report: Callable[[str], None]) -> bool:
    """Stop the stack `dev up` started from ``workdir``, and nothing else. False if none runs."""
    state_file = workdir / "state.json"
    if not state_file.exists():
        return False
    state = json.loads(state_file.read_text())
    supervisor = int(state["supervisor_pid"])
    if _alive(supervisor) and _ours(supervisor):
        report(f"stopping the dev stack (supervisor pid {supervisor})")
        os.kill(supervisor, signal.SIGTERM)
        if not _wait_gone(supervisor, 60):
            report("the supervisor did not stop in 60s; stopping its processes directly")
    # Whatever the supervisor did not get to (it crashed, or was killed), stop here.
    for name, pid in state.get("pids", {}).items():
        if _alive(pid) and _ours(pid):
            report(f"stopping {name} (pid {pid})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, 20):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    if state.get("pgdata") and (Path(state["pgdata"]) / "postmaster.pid").exists():
        report("stopping PostgreSQL")
        stop_postgres(Path(state["pgdata"]))
    state_file.unlink(missing_ok=True)
    return True
