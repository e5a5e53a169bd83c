"""What only the sandbox CRM does beyond the adapter contract (``test_crm_contract.py``): a merge
keeps the survivor's id and records the merged ids on it, as HubSpot's ``hs_merged_object_ids``
does, and merging the same records again changes nothing."""

from __future__ import annotations

import asyncpg
import pytest
from changegate.core.contracts import ObjectType
from changegate.core.db import migrate, migrate_core
from changegate.executor.crm import sandbox
from changegate.executor.crm.sandbox import SandboxCrm

C = ObjectType.CONTACT


@pytest.fixture
async def crm(pool: asyncpg.Pool) -> SandboxCrm:
    await migrate_core(pool)
    await migrate(pool, "executor", "changegate.executor.migrations")
    return SandboxCrm(pool)


async def test_a_merge_keeps_the_survivor_and_records_the_merged_ids(
    crm: SandboxCrm, pool: asyncpg.Pool
) -> None:
    for rid in ("s", "l1", "l2"):
        await sandbox.upsert_record(pool, C, rid, {"email": "a@x.io"})
    assert (await crm.merge(C, "s", ["l1", "l2"])).merged_id == "s"
    assert (await sandbox.get_record(pool, C, "s") or {})["hs_merged_object_ids"] == "l1;l2"
    assert (await crm.merge(C, "s", ["l1"])).merged_id == "s"
    assert (await sandbox.get_record(pool, C, "s") or {})["hs_merged_object_ids"] == "l1;l2"
