"""The HubSpot adapter once against Stoplight Prism serving HubSpot's own OpenAPI documents: every
request it makes must pass Prism's validation (Prism answers with the documents' examples).
Skips, saying so, where node and npm are not installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from changegate.cli.embedded import free_port, wait_for_port
from changegate.core.contracts import FieldChange, ObjectType
from changegate.executor.crm.hubspot.adapter import HubSpotCrm
from changegate.executor.crm.hubspot.client import HubSpotClient
from changegate.executor.crm.port import OwnerStatus, WriteStatus

PRISM_VERSION = "5.14.2"  # @stoplight/prism-cli, from the npm registry
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "changegate" / f"prism-{PRISM_VERSION}"
)


def _prism() -> Path:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node and npm are not installed: the adapter's run against Stoplight Prism is skipped")
    binary = CACHE / "node_modules" / ".bin" / "prism"
    if not binary.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(CACHE),
                "--no-audit",
                "--no-fund",
                f"@stoplight/prism-cli@{PRISM_VERSION}",
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
    return binary


class Prism:
    def __init__(self, binary: Path, spec: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen(
            [str(binary), "mock", "-h", "127.0.0.1", "-p", str(self.port), str(spec)],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, 60, self.proc)

    def violations(self) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines() if "Violation" in line]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def prism_servers(
    spec_file: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Prism, Prism]]:
    binary = _prism()
    logs = tmp_path_factory.mktemp("prism")
    contacts = Prism(binary, spec_file("hubspot/crm-contacts.v3.json"), logs / "contacts.log")
    owners = Prism(binary, spec_file("hubspot/crm-owners.v3.json"), logs / "owners.log")
    yield contacts, owners
    contacts.stop()
    owners.stop()


async def test_every_request_of_the_adapter_passes_prisms_validation(
    prism_servers: tuple[Prism, Prism],
) -> None:
    contacts, owners = prism_servers
    crm = HubSpotCrm(HubSpotClient(contacts.url, "prism-token", attempts=1))
    owner_crm = HubSpotCrm(HubSpotClient(owners.url, "prism-token", attempts=1))
    try:
        found = await crm.read(ObjectType.CONTACT, ["512"], ["email", "jobtitle"])
        assert found["512"].properties["email"] == "bcooper@biglytics.net"  # the document's example
        change = FieldChange(field="email", previous="bcooper@biglytics.net", proposed="bryan@biglytics.net")
        written = await crm.write(ObjectType.CONTACT, "512", [change])
        # Prism answers with the example again: the re-read "sees" another writer — and says so.
        assert written.status is WriteStatus.APPLIED
        assert written.note == "changed by another writer right after this write: email"
        merged = await crm.merge(ObjectType.CONTACT, "512", ["513"])
        assert merged.merged_id == "512"
        assert await owner_crm.owner_status("6166860") is OwnerStatus.ACTIVE
    finally:
        await crm.close()
        await owner_crm.close()
    assert contacts.violations() == []
    assert owners.violations() == []
    # The check can fail: a request outside the documents leaves a violation in Prism's log.
    async with httpx.AsyncClient(base_url=contacts.url) as raw:
        await raw.patch(
            "/crm/v3/objects/contacts/512",
            json={"properties": ["not", "an", "object"]},
            headers={"Authorization": "Bearer prism-token"},
        )
    assert contacts.violations() != []
