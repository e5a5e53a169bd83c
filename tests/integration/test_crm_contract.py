"""One contract for every CRM adapter (``executor/crm/port.py``): read, compare-and-set write,
conflict, merge, owner validation, a record gone, listing for an import, the CRM's rate limit, an
outage. ``CrmContract`` holds the tests; each backend subclasses it with a ``backend`` fixture — the
sandbox (PostgreSQL) and HubSpot (the simulator, checked against HubSpot's documents). A third CRM
passes the same tests by adding a subclass; what only one CRM does stays in its own suite
(``test_hubspot_adapter.py``: 207 partial results, HubSpot's headers, tokens)."""

from __future__ import annotations

import contextlib
import itertools
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from changegate.cli.embedded import free_port
from changegate.core.contracts import FieldChange, ObjectType
from changegate.core.contracts.base import PropertyValue
from changegate.core.db import migrate, migrate_core
from changegate.executor.crm import sandbox
from changegate.executor.crm.hubspot.adapter import HubSpotCrm
from changegate.executor.crm.hubspot.client import HubSpotClient
from changegate.executor.crm.port import (
    CrmAdapter,
    CrmUnavailableError,
    OwnerStatus,
    RecordNotFoundError,
    WriteStatus,
)
from changegate.executor.crm.sandbox import SandboxCrm
from changegate.hubspot_sim import TOKEN, UI_TOKEN, SimServer

C = ObjectType.CONTACT


class Backend(ABC):
    """A CRM as the contract drives it: ``adapter`` is under test; the rest works on the CRM around
    it, as its users and its operators would."""

    adapter: CrmAdapter
    # an active owner, an archived one, and an id of the CRM's form that names nobody
    owner_ids: tuple[str, str, str]

    @abstractmethod
    async def create(self, properties: dict[str, str]) -> str:
        """A record made in the CRM; its id."""

    @abstractmethod
    async def change(self, record_id: str, properties: dict[str, str]) -> None:
        """Someone else changes the record in the CRM."""

    @abstractmethod
    async def delete(self, record_id: str) -> None:
        """The record is deleted in the CRM."""

    @abstractmethod
    async def held(self, record_id: str) -> dict[str, Any]:
        """What the CRM holds for the record (following merges), seen without the adapter."""

    @abstractmethod
    async def add_owners(self) -> None:
        """``owner_ids``' active and archived owners exist."""

    async def limit(self, requests: int, window: float) -> bool:
        """Make the CRM refuse more than ``requests`` calls a ``window``; False: it has no limit."""
        return False

    @abstractmethod
    def outage(self) -> contextlib.AbstractAsyncContextManager[CrmAdapter]:
        """The CRM unreachable while inside; an adapter to it."""


def _change(field: str, previous: PropertyValue, proposed: PropertyValue) -> FieldChange:
    return FieldChange(field=field, previous=previous, proposed=proposed)


def _empty(value: Any) -> bool:
    return value in (None, "")


class CrmContract:
    """Every test takes ``backend``; a subclass provides it."""

    async def test_read_answers_the_fields_asked_for_by_the_id_asked_with(self, backend: Backend) -> None:
        rid = await backend.create({"firstname": "Ada", "jobtitle": "Engineer"})
        found = await backend.adapter.read(C, [rid, "987654321"], ["jobtitle", "city"])
        assert list(found) == [rid]  # a record the CRM does not have is absent, not an error
        assert found[rid].record_id == rid
        assert found[rid].properties["jobtitle"] == "Engineer"
        assert _empty(found[rid].properties["city"])
        assert set(found[rid].properties) == {"jobtitle", "city"}

    async def test_a_write_applies_when_every_field_holds_its_previous_value(self, backend: Backend) -> None:
        made = {"jobtitle": "Engineer", "city": "Oslo", "numemployees": "250", "phone": ""}
        rid = await backend.create(made)
        seen: list[dict[str, PropertyValue]] = []

        async def before(values: dict[str, PropertyValue]) -> None:
            seen.append(values)

        changes = [_change("jobtitle", "Engineer", "CTO"), _change("numemployees", 250, 300)]
        # An empty value and a value never set both match an empty previous.
        empties = [_change("phone", None, "+47 22 00 00 00"), _change("zip", None, "0150")]
        result = await backend.adapter.write(C, rid, [*changes, *empties], before)
        assert result.status is WriteStatus.APPLIED
        assert [(w.field, w.overwritten, w.new) for w in result.writes][:2] == [
            ("jobtitle", "Engineer", "CTO"),
            ("numemployees", "250", 300),
        ]
        assert len(seen) == 1  # told what the CRM held, once, before writing
        assert seen[0]["jobtitle"] == "Engineer"
        held = await backend.held(rid)
        assert (held["jobtitle"], str(held["numemployees"]), held["phone"], held["zip"], held["city"]) == (
            "CTO",
            "300",
            "+47 22 00 00 00",
            "0150",
            "Oslo",
        )

    async def test_nothing_is_written_when_the_crm_holds_the_proposed_values(self, backend: Backend) -> None:
        rid = await backend.create({"email": "Ada@Example.com", "numemployees": "300"})
        seen: list[object] = []

        async def before(values: dict[str, PropertyValue]) -> None:
            seen.append(values)

        changes = [_change("email", "old@example.com", "ada@example.COM"), _change("numemployees", 1, 300.0)]
        result = await backend.adapter.write(C, rid, changes, before)
        assert result.status is WriteStatus.NOOP  # an email without case, a number by value
        assert seen == []
        assert (await backend.held(rid))["email"] == "Ada@Example.com"

    async def test_a_record_changed_since_the_proposal_is_a_conflict_and_nothing_is_written(
        self, backend: Backend
    ) -> None:
        rid = await backend.create({"jobtitle": "Engineer"})
        await backend.change(rid, {"jobtitle": "Director"})
        seen: list[object] = []

        async def before(values: dict[str, PropertyValue]) -> None:
            seen.append(values)

        changes = [_change("jobtitle", "Engineer", "CTO"), _change("city", None, "Oslo")]
        result = await backend.adapter.write(C, rid, changes, before)
        assert result.status is WriteStatus.CONFLICT
        assert result.conflicts == ["jobtitle"]
        assert result.current["jobtitle"] == "Director"  # what a refreshed proposal starts from
        assert seen == []
        held = await backend.held(rid)
        assert held["jobtitle"] == "Director"
        assert _empty(held.get("city"))  # not even the field that did not conflict

    async def test_a_merge_folds_the_losers_into_the_survivor_and_reads_follow_it(
        self, backend: Backend
    ) -> None:
        survivor = await backend.create({"email": "a@x.io", "jobtitle": "CTO", "phone": "+1 415 555 0100"})
        losers = [
            await backend.create({"email": "a@x.io", "jobtitle": "Engineer"}),
            await backend.create({"email": "A@X.IO"}),
        ]
        merged = await backend.adapter.merge(C, survivor, losers)
        found = await backend.adapter.read(C, [survivor, *losers], ["jobtitle", "phone"])
        assert {state.record_id for state in found.values()} == {merged.merged_id}
        assert found[survivor].properties == {
            "jobtitle": "CTO",
            "phone": "+1 415 555 0100",
        }  # its own values kept
        # A write to a merged-away id lands on the record it was merged into.
        result = await backend.adapter.write(C, losers[0], [_change("jobtitle", "CTO", "VP")])
        assert result.status is WriteStatus.APPLIED
        assert (await backend.held(merged.merged_id))["jobtitle"] == "VP"

    async def test_owners_are_active_archived_or_unknown(self, backend: Backend) -> None:
        await backend.add_owners()
        active, archived, unknown = backend.owner_ids
        assert await backend.adapter.owner_status(active) is OwnerStatus.ACTIVE
        assert await backend.adapter.owner_status(archived) is OwnerStatus.ARCHIVED
        assert await backend.adapter.owner_status(unknown) is OwnerStatus.UNKNOWN

    async def test_a_record_that_is_gone_is_absent_and_cannot_be_written_or_merged(
        self, backend: Backend
    ) -> None:
        kept = await backend.create({"jobtitle": "Engineer"})
        gone = await backend.create({"jobtitle": "Engineer"})
        await backend.delete(gone)
        assert await backend.adapter.read(C, [gone], ["jobtitle"]) == {}
        with pytest.raises(RecordNotFoundError):
            await backend.adapter.write(C, gone, [_change("jobtitle", "Engineer", "CTO")])
        with pytest.raises(RecordNotFoundError):
            await backend.adapter.merge(C, kept, [gone])
        assert (await backend.held(kept))["jobtitle"] == "Engineer"

    async def test_every_live_record_is_listed_once_a_page_at_a_time(self, backend: Backend) -> None:
        made = [await backend.create({"firstname": f"P{i}", "lastname": "Page"}) for i in range(7)]
        merged = await backend.adapter.merge(C, made[0], [made[1]])
        assert await backend.adapter.count(C) == 6
        listed: list[str] = []
        after = None
        for _ in range(10):
            page = await backend.adapter.list_page(C, ["firstname", "lastname"], after, 3)
            assert len(page.records) <= 3
            listed += [r.record_id for r in page.records]
            assert all(r.updated_at.tzinfo is not None for r in page.records)
            if page.after is None:
                break
            after = page.after
        assert sorted(listed) == sorted({merged.merged_id, *made[2:]})
        by_id = {r: (await backend.held(r))["firstname"] for r in listed}
        assert by_id[merged.merged_id] == "P0"

    async def test_the_crms_rate_limit_slows_calls_down_and_loses_none(self, backend: Backend) -> None:
        rid = await backend.create({"city": "Oslo"})
        if not await backend.limit(3, 1.0):
            pytest.skip("this CRM has no rate limit")
        try:
            for _ in range(7):  # more than two windows' worth: the adapter waits, nothing fails
                assert (await backend.adapter.read(C, [rid], ["city"]))[rid].properties == {"city": "Oslo"}
            result = await backend.adapter.write(C, rid, [_change("city", "Oslo", "Bergen")])
            assert result.status is WriteStatus.APPLIED
        finally:
            await backend.limit(0, 0)
        assert (await backend.held(rid))["city"] == "Bergen"

    async def test_an_outage_is_the_crm_unavailable_and_nothing_is_written(self, backend: Backend) -> None:
        rid = await backend.create({"city": "Oslo"})
        async with backend.outage() as down:
            with pytest.raises(CrmUnavailableError):
                await down.read(C, [rid], ["city"])
            with pytest.raises(CrmUnavailableError):
                await down.write(C, rid, [_change("city", "Oslo", "Bergen")])
            with pytest.raises(CrmUnavailableError):
                await down.owner_status(backend.owner_ids[0])
        assert (await backend.held(rid))["city"] == "Oslo"
        # Back up, the same call goes through.
        result = await backend.adapter.write(C, rid, [_change("city", "Oslo", "Bergen")])
        assert result.status is WriteStatus.APPLIED


# -- the sandbox: a table in PostgreSQL --------------------------------------------------------------


class SandboxBackend(Backend):
    owner_ids = ("owner-west", "owner-gone", "owner-nobody")

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.adapter = SandboxCrm(pool)
        self.ids = itertools.count(1)

    async def create(self, properties: dict[str, str]) -> str:
        rid = f"sb-{next(self.ids)}"
        await sandbox.upsert_record(self.pool, C, rid, dict(properties))
        return rid

    async def change(self, record_id: str, properties: dict[str, str]) -> None:
        await sandbox.upsert_record(self.pool, C, record_id, dict(properties))

    async def delete(self, record_id: str) -> None:
        await self.pool.execute(
            "DELETE FROM sandbox_crm_records WHERE object_type = $1 AND record_id = $2", C.value, record_id
        )

    async def held(self, record_id: str) -> dict[str, Any]:
        rid = record_id
        while (into := await sandbox.merged_into(self.pool, C, rid)) is not None:
            rid = into
        return await sandbox.get_record(self.pool, C, rid) or {}

    async def add_owners(self) -> None:
        await sandbox.upsert_owner(self.pool, self.owner_ids[0])
        await sandbox.upsert_owner(self.pool, self.owner_ids[1], archived=True)

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[CrmAdapter]:
        # Its database not answering (nothing listens on the port).
        dead = await asyncpg.create_pool(
            f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", min_size=0
        )
        try:
            yield SandboxCrm(dead)
        finally:
            await dead.close()


class TestSandboxCrm(CrmContract):
    @pytest.fixture
    async def backend(self, pool: asyncpg.Pool) -> SandboxBackend:
        await migrate_core(pool)
        await migrate(pool, "executor", "changegate.executor.migrations")
        return SandboxBackend(pool)


# -- HubSpot: the simulator, every request checked against HubSpot's documents ------------------------


class HubSpotBackend(Backend):
    owner_ids = ("51", "52", "53")

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.adapter = HubSpotCrm(HubSpotClient(sim.url, TOKEN, attempts=3, timeout=5))
        # A person in HubSpot's UI (not changegate's app): how records are made and changed around it.
        self.ui = httpx.AsyncClient(
            base_url=sim.url, headers={"Authorization": f"Bearer {UI_TOKEN}"}, timeout=10
        )

    async def create(self, properties: dict[str, str]) -> str:
        response = await self.ui.post(
            "/crm/v3/objects/contacts", json={"properties": properties, "associations": []}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def change(self, record_id: str, properties: dict[str, str]) -> None:
        response = await self.ui.patch(
            f"/crm/v3/objects/contacts/{record_id}", json={"properties": properties}
        )
        assert response.status_code == 200, response.text

    async def delete(self, record_id: str) -> None:
        assert (await self.ui.delete(f"/crm/v3/objects/contacts/{record_id}")).status_code == 204

    async def held(self, record_id: str) -> dict[str, Any]:
        found = self.sim.record(record_id)
        return {} if found is None else dict(found["properties"])

    async def add_owners(self) -> None:
        self.sim.owners(
            {"id": "51", "email": "west@x.io"}, {"id": "52", "email": "gone@x.io", "archived": True}
        )

    async def limit(self, requests: int, window: float) -> bool:
        self.sim.rate(requests or None, window or 10.0)
        return True

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[CrmAdapter]:
        self.sim.fault(status=503, count=1_000)
        try:
            yield self.adapter
        finally:
            self.sim.clear_faults()

    async def close(self) -> None:
        await self.adapter.close()
        await self.ui.aclose()


class TestHubSpotCrm(CrmContract):
    @pytest.fixture
    async def backend(self, hubspot_sim: SimServer) -> AsyncIterator[HubSpotBackend]:
        hubspot_sim.reset()
        backend = HubSpotBackend(hubspot_sim)
        yield backend
        await backend.close()
        assert hubspot_sim.log()["violations"] == []  # nothing HubSpot's documents refuse was sent
