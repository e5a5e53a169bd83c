"""Serving the simulator on a loopback port from a thread of the calling process, and driving it
through its control endpoints (``/_sim``)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from changegate.hubspot_sim.app import TOKEN, create_app
from changegate.hubspot_sim.webhooks import Subscription


class SimClient:
    """The control endpoints of a simulator at ``url`` (in this process or another)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _post(self, path: str, body: Any, timeout: float = 30) -> dict[str, Any]:
        response = httpx.post(f"{self.url}{path}", json=body, timeout=timeout)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def reset(self) -> None:
        self._post("/_sim/reset", {})

    def records(self, *records: dict[str, Any], notify: bool = False) -> None:
        """Seed records: {"id", "properties", "objects" (default contacts)}; ``notify``: report them
        to the webhook subscription as a person's changes in HubSpot's UI."""
        self._post("/_sim/records", {"records": list(records), "notify": notify})

    def seed(self, contacts: int, seed: int = 1) -> dict[str, Any]:
        return self._post("/_sim/seed", {"contacts": contacts, "seed": seed}, timeout=300)

    def owners(self, *owners: dict[str, Any]) -> None:
        self._post("/_sim/owners", {"owners": list(owners)})

    def fault(self, **fault: Any) -> None:
        self._post("/_sim/faults", fault)

    def clear_faults(self) -> None:
        httpx.delete(f"{self.url}/_sim/faults", timeout=5).raise_for_status()

    def rate(self, max_requests: int | None, window: float = 10.0) -> None:
        self._post("/_sim/rate", {"max": max_requests, "window": window})

    def webhooks(self, url: str, client_secret: str, properties: list[str] | None = None) -> None:
        self._post("/_sim/webhooks", {"url": url, "client_secret": client_secret, "properties": properties})

    def flush(self, timeout: float = 30) -> dict[str, Any]:
        """Wait until every change so far was reported to the webhook subscription."""
        response = httpx.post(
            f"{self.url}/_sim/webhooks/flush", params={"timeout": timeout}, timeout=timeout + 5
        )
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def record(self, record_id: str, objects: str = "contacts") -> dict[str, Any] | None:
        """A record as the simulator holds it, following merges (None: gone or never there)."""
        response = httpx.get(f"{self.url}/_sim/records/{objects}/{record_id}", timeout=5)
        if response.status_code == 404:
            return None
        body: dict[str, Any] = response.json()
        return body

    def delete(self, record_id: str, objects: str = "contacts") -> None:
        httpx.delete(f"{self.url}/_sim/records/{objects}/{record_id}", timeout=5).raise_for_status()

    def info(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.url}/_sim/info", timeout=5).json()
        return body

    def log(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.url}/_sim/log", timeout=30).json()
        return body

    def calls(self, path_part: str) -> list[dict[str, Any]]:
        return [c for c in self.log()["calls"] if path_part in c["path"]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SimServer(SimClient):
    """The simulator in a thread of this process (tests)."""

    def __init__(self, specs_dir: Path | None, subscription: Subscription | None = None) -> None:
        self.port = _free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        app = create_app(specs_dir, TOKEN, subscription=subscription)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("the HubSpot simulator did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
