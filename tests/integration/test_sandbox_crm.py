"""The sandbox CRM adapter against PostgreSQL: compare-and-set with the normalisation rules,
merges that redirect reads of merged-away ids, owners."""

from __future__ import annotations

import asyncpg
import pytest
from changegate.core.contracts import FieldChange, ObjectType
from changegate.core.contracts.base import PropertyValue
from changegate.core.db import migrate, migrate_core
from changegate.executor.crm import sandbox
from changegate.executor.crm.port import OwnerStatus, RecordNotFoundError, WriteStatus
from changegate.executor.crm.sandbox import SandboxCrm

C = ObjectType.CONTACT


@pytest.fixture
async def crm(pool: asyncpg.Pool) -> SandboxCrm:
    await migrate_core(pool)
    await migrate(pool, "executor", "changegate.executor.migrations")
    return SandboxCrm(pool)


async def test_compare_and_set_writes_only_over_the_expected_value(
    crm: SandboxCrm, pool: asyncpg.Pool
) -> None:
    await sandbox.upsert_record(pool, C, "c1", {"jobtitle": "", "city": "Oslo", "email": "Ada@Example.com"})
    observed: list[object] = []

    async def before(values: dict[str, PropertyValue]) -> None:
        observed.append(values)

    ok = await crm.write(C, "c1", [FieldChange(field="jobtitle", previous=None, proposed="CTO")], before)
    assert ok.status is WriteStatus.APPLIED
    assert ok.writes[0].overwritten == ""
    assert observed == [{"jobtitle": ""}]  # told what was there, before writing
    stale = await crm.write(C, "c1", [FieldChange(field="city", previous="Bergen", proposed="Rome")], before)
    assert (stale.status, stale.conflicts, stale.current) == (
        WriteStatus.CONFLICT,
        ["city"],
        {"city": "Oslo"},
    )
    # The email holds what is proposed, in another case: nothing to write.
    noop = await crm.write(
        C, "c1", [FieldChange(field="email", previous="x@y.z", proposed="ada@example.com")]
    )
    assert noop.status is WriteStatus.NOOP
    assert len(observed) == 1
    with pytest.raises(RecordNotFoundError):
        await crm.write(C, "nope", [FieldChange(field="city", previous=None, proposed="x")])
    assert await sandbox.get_record(pool, C, "c1") == {
        "jobtitle": "CTO",
        "city": "Oslo",
        "email": "Ada@Example.com",
    }


async def test_a_merge_redirects_the_losers_to_the_survivor(crm: SandboxCrm, pool: asyncpg.Pool) -> None:
    await sandbox.upsert_record(pool, C, "s", {"email": "a@x.io", "phone": ""})
    await sandbox.upsert_record(pool, C, "l1", {"email": "a@x.io", "phone": "+1"})
    await sandbox.upsert_record(pool, C, "l2", {"email": "a@x.io"})
    fill = await crm.write(C, "s", [FieldChange(field="phone", previous=None, proposed="+1")])
    assert fill.status is WriteStatus.APPLIED
    merged = await crm.merge(C, "s", ["l1", "l2"])
    assert merged.merged_id == "s"
    read = await crm.read(C, ["l1", "l2", "s"], ["phone"])
    assert {rid: (state.record_id, state.properties) for rid, state in read.items()} == {
        "l1": ("s", {"phone": "+1"}),
        "l2": ("s", {"phone": "+1"}),
        "s": ("s", {"phone": "+1"}),
    }
    assert (await sandbox.get_record(pool, C, "s") or {})["hs_merged_object_ids"] == "l1;l2"
    # Writing to a merged-away id lands on the survivor; merging again changes nothing.
    again = await crm.write(C, "l1", [FieldChange(field="phone", previous="+1", proposed="+2")])
    assert again.status is WriteStatus.APPLIED
    assert (await sandbox.get_record(pool, C, "s") or {})["phone"] == "+2"
    assert (await crm.merge(C, "s", ["l1"])).merged_id == "s"
    assert (await sandbox.get_record(pool, C, "s") or {})["hs_merged_object_ids"] == "l1;l2"
    with pytest.raises(RecordNotFoundError):
        await crm.merge(C, "s", ["ghost"])


async def test_owners_are_active_archived_or_unknown(crm: SandboxCrm, pool: asyncpg.Pool) -> None:
    await sandbox.upsert_owner(pool, "owner-west")
    await sandbox.upsert_owner(pool, "owner-gone", archived=True)
    assert await crm.owner_status("owner-west") is OwnerStatus.ACTIVE
    assert await crm.owner_status("owner-gone") is OwnerStatus.ARCHIVED
    assert await crm.owner_status("owner-who") is OwnerStatus.UNKNOWN
