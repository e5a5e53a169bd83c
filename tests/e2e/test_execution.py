"""Merges and owner changes through every process on the sandbox CRM: detected, routed to review,
approved by a reviewer, executed, audited — and the review queue shows what became of them."""

from __future__ import annotations

import uuid

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer
from changegate.cli.devstack import DevStack
from changegate.core.contracts import ObjectType
from changegate.core.contracts.base import PropertyValue
from changegate.executor.crm import sandbox
from helpers import approve_and_execute, audited, eventually, send_created


async def test_an_approved_merge_is_carried_out_in_the_sandbox(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    tag = uuid.uuid4().hex[:6]
    full, thin = f"m-full-{tag}", f"m-thin-{tag}"
    props_full: dict[str, PropertyValue] = {
        "firstname": "Robert",
        "lastname": f"Zed{tag}",
        "email": f"rz{tag}@acme.example",
        "phone": "+1 415 555 0134",
        "company": "Acme Inc.",
        "city": "San Francisco",
        "jobtitle": "CTO",
        "zip": "",
    }
    props_thin: dict[str, PropertyValue] = {
        "firstname": "Bob",
        "lastname": f"Zed{tag}",
        "email": f"RZ{tag}@acme.example",
        "phone": "(415) 555-0134",
        "company": "Acme",
        "zip": "94107",
    }
    for rid, props in ((full, props_full), (thin, props_thin)):
        await sandbox.upsert_record(db, ObjectType.CONTACT, rid, props)
        await send_created(stack, producer, rid, **props)
    item = await approve_and_execute(client, stack, thin, "merge")
    assert item["execution"]["status"] == "applied"
    assert (item["record_id"], item["other_record_ids"]) == (full, [thin])
    assert await sandbox.merged_into(db, ObjectType.CONTACT, thin) == full
    survivor = await sandbox.get_record(db, ObjectType.CONTACT, full) or {}
    assert survivor["zip"] == "94107"  # the survivorship fill from the merged record
    assert thin in survivor["hs_merged_object_ids"].split(";")
    rows = await eventually(lambda: audited(client, stack, full), lambda r: len(r) >= 2, what="merge audited")
    assert {r["field"] for r in rows} >= {"zip", "hs_merged_object_ids"}
    assert {r["approver"] for r in rows} == {"alice@example.com"}


async def test_an_approved_owner_change_assigns_the_territory_owner(
    stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    rid = f"own-{uuid.uuid4().hex[:6]}"
    await sandbox.upsert_owner(db, "owner-west")
    props: dict[str, PropertyValue] = {
        "country": "United States",
        "state": "CA",
        "hubspot_owner_id": "owner-17",
    }
    await sandbox.upsert_record(db, ObjectType.CONTACT, rid, props)
    await send_created(stack, producer, rid, **props)
    item = await approve_and_execute(client, stack, rid, "owner_reassignment")
    assert item["execution"]["status"] == "applied"
    assert (await sandbox.get_record(db, ObjectType.CONTACT, rid) or {})["hubspot_owner_id"] == "owner-west"
    [row] = await eventually(lambda: audited(client, stack, rid), lambda r: len(r) == 1, what="owner audited")
    assert (row["field"], row["previous_value"], row["new_value"]) == (
        "hubspot_owner_id",
        "owner-17",
        "owner-west",
    )
