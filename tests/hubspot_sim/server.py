"""Serving the simulator on a loopback port from a thread of the test process, and driving it."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from changegate.cli.embedded import free_port

from hubspot_sim.app import create_app

TOKEN = "sim-token"


class SimServer:
    def __init__(self, specs_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(specs_dir, TOKEN), host="127.0.0.1", port=self.port, log_level="warning"
        )
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

    def _post(self, path: str, body: Any) -> None:
        httpx.post(f"{self.url}{path}", json=body, timeout=5).raise_for_status()

    def reset(self) -> None:
        self._post("/_sim/reset", {})

    def records(self, *records: dict[str, Any]) -> None:
        """Seed records: {"id", "properties", "objects" (default contacts)}."""
        self._post("/_sim/records", {"records": list(records)})

    def owners(self, *owners: dict[str, Any]) -> None:
        self._post("/_sim/owners", {"owners": list(owners)})

    def fault(self, **fault: Any) -> None:
        self._post("/_sim/faults", fault)

    def rate(self, max_requests: int | None, window: float = 10.0) -> None:
        self._post("/_sim/rate", {"max": max_requests, "window": window})

    def record(self, record_id: str, objects: str = "contacts") -> dict[str, Any] | None:
        response = httpx.get(f"{self.url}/_sim/records/{objects}/{record_id}", timeout=5)
        if response.status_code == 404:
            return None
        body: dict[str, Any] = response.json()
        return body

    def log(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.url}/_sim/log", timeout=5).json()
        return body

    def calls(self, path_part: str) -> list[dict[str, Any]]:
        return [c for c in self.log()["calls"] if path_part in c["path"]]
