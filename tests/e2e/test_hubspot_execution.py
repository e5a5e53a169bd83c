"""The whole pipeline with the executor pointed at the HubSpot simulator (validated against HubSpot's
OpenAPI documents): an approved merge and an approved owner change are carried out in "HubSpot"."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from changegate.cli.devstack import DevStack
from changegate.core.contracts.base import PropertyValue
from changegate.hubspot_sim import TOKEN, SimServer
from helpers import approve_and_execute, audited, eventually, running_stack, send_created

OWNER_WEST = "78"  # HubSpot owner ids are numbers


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, database_url: str, hubspot_sim: SimServer) -> Iterator[DevStack]:
    hubspot_sim.reset()
    env = {
        "CHANGEGATE_CRM": "hubspot",
        "CHANGEGATE_HUBSPOT_BASE_URL": hubspot_sim.url,
        "CHANGEGATE_HUBSPOT_TOKEN": TOKEN,
        "CHANGEGATE_OWNER": json.dumps(
            {"territories": [{"country": "us", "state": "CA", "owner": OWNER_WEST}]}
        ),
    }
    with running_stack(kafka_bootstrap, database_url, **env) as running:
        yield running


async def test_an_approved_merge_is_carried_out_in_hubspot(
    stack: DevStack, hubspot_sim: SimServer, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    tag = uuid.uuid4().hex[:6]
    full: dict[str, PropertyValue] = {
        "firstname": "Robert",
        "lastname": f"Zed{tag}",
        "email": f"rz{tag}@acme.example",
        "phone": "+1 415 555 0134",
        "company": "Acme Inc.",
        "city": "San Francisco",
        "jobtitle": "CTO",
        "zip": "",
    }
    thin: dict[str, PropertyValue] = {
        "firstname": "Bob",
        "lastname": f"Zed{tag}",
        "email": f"RZ{tag}@acme.example",
        "phone": "(415) 555-0134",
        "company": "Acme",
        "zip": "94107",
    }
    hubspot_sim.records({"id": "7001", "properties": full}, {"id": "7002", "properties": thin})
    await send_created(stack, producer, "7001", **full)
    await send_created(stack, producer, "7002", **thin)
    item = await approve_and_execute(client, stack, "7002", "merge")
    assert item["execution"]["status"] == "applied"
    merged = hubspot_sim.record("7002") or {}
    survivor = hubspot_sim.record("7001") or {}
    assert merged["id"] == survivor["id"] not in ("7001", "7002")  # both resolve to HubSpot's new id
    assert merged["properties"]["zip"] == "94107"
    rows = await eventually(
        lambda: audited(client, stack, "7001"), lambda r: len(r) >= 2, what="merge audited"
    )
    assert {r["field"] for r in rows} >= {"zip", "hs_merged_object_ids"}
    assert hubspot_sim.log()["violations"] == []


async def test_an_approved_owner_change_is_validated_and_written_in_hubspot(
    stack: DevStack, hubspot_sim: SimServer, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    hubspot_sim.owners({"id": OWNER_WEST, "email": "west@acme.example"})
    props: dict[str, PropertyValue] = {"country": "United States", "state": "CA", "hubspot_owner_id": "17"}
    hubspot_sim.records({"id": "7101", "properties": props})
    await send_created(stack, producer, "7101", **props)
    item = await approve_and_execute(client, stack, "7101", "owner_reassignment")
    assert item["execution"]["status"] == "applied"
    assert (hubspot_sim.record("7101") or {})["properties"]["hubspot_owner_id"] == OWNER_WEST
    assert len(hubspot_sim.calls(f"/owners/{OWNER_WEST}")) >= 1
    assert hubspot_sim.log()["violations"] == []
