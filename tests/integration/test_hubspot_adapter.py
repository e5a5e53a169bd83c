"""What only the HubSpot adapter does beyond the adapter contract (``test_crm_contract.py``), against
the simulator, which validates every request and answer against HubSpot's own OpenAPI documents:
one batch update per write and none for a no-op or a conflict, 207 partial results, merges into a new
id two at a time, owner ids that are not HubSpot's never asked, retries on 429 / 423 / 5xx, the rate
limit headers, tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from changegate.core.contracts import FieldChange, ObjectType
from changegate.core.contracts.base import PropertyValue
from changegate.executor.crm.hubspot.adapter import HubSpotCrm
from changegate.executor.crm.hubspot.client import HubSpotClient
from changegate.executor.crm.port import (
    CrmRefusedError,
    CrmUnavailableError,
    OwnerStatus,
    WriteStatus,
)
from changegate.hubspot_sim import TOKEN, SimServer

C = ObjectType.CONTACT


@pytest.fixture
async def crm(hubspot_sim: SimServer) -> AsyncIterator[HubSpotCrm]:
    hubspot_sim.reset()
    adapter = HubSpotCrm(HubSpotClient(hubspot_sim.url, TOKEN, attempts=4, timeout=5))
    yield adapter
    await adapter.close()
    assert hubspot_sim.log()["violations"] == []  # nothing HubSpot's documents refuse was sent


def _change(field: str, previous: PropertyValue, proposed: PropertyValue) -> FieldChange:
    return FieldChange(field=field, previous=previous, proposed=proposed)


async def test_only_an_applied_write_sends_hubspot_a_batch_update(
    crm: HubSpotCrm, hubspot_sim: SimServer
) -> None:
    hubspot_sim.records({"id": "101", "properties": {"jobtitle": "", "numemployees": "250"}})
    applied = await crm.write(C, "101", [_change("jobtitle", None, "CTO")])
    assert applied.status is WriteStatus.APPLIED
    assert applied.note is None
    assert applied.response_ids[0].startswith("hubspot:contacts/101@")
    # HubSpot stores every value as a string: 250 and "250.0" are the same number.
    noop = await crm.write(C, "101", [_change("numemployees", 1, 250.0)])
    assert noop.status is WriteStatus.NOOP
    stale = await crm.write(C, "101", [_change("jobtitle", "Engineer", "VP")])
    assert stale.status is WriteStatus.CONFLICT
    assert len(hubspot_sim.calls("/batch/update")) == 1  # neither the noop nor the conflict wrote


async def test_batch_reads_map_207_results_back_to_their_inputs(
    crm: HubSpotCrm, hubspot_sim: SimServer
) -> None:
    hubspot_sim.records(*({"id": str(200 + i), "properties": {"city": f"c{i}"}} for i in range(150)))
    wanted = [str(200 + i) for i in range(150)] + ["404404"]
    found = await crm.read(C, wanted, ["city"])
    assert len(found) == 150
    assert found["349"].properties == {"city": "c149"}
    assert "404404" not in found
    reads = hubspot_sim.calls("/batch/read")
    # at most 100 inputs a batch; the chunks are sent together, so they may arrive in either order
    assert sorted(len(c["body"]["inputs"]) for c in reads) == [51, 100]


async def test_a_207_refusal_of_our_update_is_a_refusal(crm: HubSpotCrm, hubspot_sim: SimServer) -> None:
    hubspot_sim.records({"id": "301", "properties": {"phone": ""}})
    hubspot_sim.fault(path="/batch/update", fail_ids=["301"])
    with pytest.raises(CrmRefusedError, match="VALIDATION_ERROR"):
        await crm.write(C, "301", [_change("phone", None, "+1 415")])


async def test_a_merge_gets_a_new_id_two_records_at_a_time(crm: HubSpotCrm, hubspot_sim: SimServer) -> None:
    hubspot_sim.records(
        {"id": "401", "properties": {"email": "a@x.io", "phone": ""}},
        {"id": "402", "properties": {"email": "a@x.io", "phone": "+1"}},
        {"id": "403", "properties": {"email": "a@x.io"}},
    )
    merged = await crm.merge(C, "401", ["402", "403"])
    assert merged.merged_id not in {"401", "402", "403"}
    read = await crm.read(C, ["401"], ["phone"])
    assert read["401"].properties == {"phone": "+1"}  # empty on the primary: the other's value
    assert len(hubspot_sim.calls("/merge")) == 2  # HubSpot merges two at a time


async def test_an_owner_id_that_is_not_hubspots_is_unknown_without_asking(
    crm: HubSpotCrm, hubspot_sim: SimServer
) -> None:
    assert await crm.owner_status("owner-west") is OwnerStatus.UNKNOWN
    assert len(hubspot_sim.calls("/owners/owner-west")) == 0


@pytest.mark.parametrize("status", [429, 423, 500, 503])
async def test_rate_limits_locks_and_server_errors_are_retried_then_succeed(
    crm: HubSpotCrm, hubspot_sim: SimServer, status: int
) -> None:
    hubspot_sim.records({"id": "501", "properties": {"city": "Oslo"}})
    hubspot_sim.fault(path="/batch/read", status=status, count=2, retry_after=0.2 if status == 429 else None)
    found = await crm.read(C, ["501"], ["city"])
    assert found["501"].properties == {"city": "Oslo"}
    assert len(hubspot_sim.calls("/batch/read")) == 3


async def test_an_outage_that_outlasts_the_retries_is_a_crm_outage(
    crm: HubSpotCrm, hubspot_sim: SimServer
) -> None:
    hubspot_sim.fault(path="/batch/read", status=502, count=10)
    with pytest.raises(CrmUnavailableError, match="after 4 attempts"):
        await crm.read(C, ["1"], ["city"])


async def test_the_rate_limit_headers_hold_calls_until_the_window_rolls(
    crm: HubSpotCrm, hubspot_sim: SimServer
) -> None:
    hubspot_sim.records({"id": "601", "properties": {"city": "Oslo"}})
    hubspot_sim.rate(3, window=1.0)
    for _ in range(6):  # twice the limit: HubSpot says 0 remaining, the client waits, never a 429 spree
        assert (await crm.read(C, ["601"], ["city"]))["601"].properties == {"city": "Oslo"}
    hubspot_sim.rate(None)
    assert len(hubspot_sim.calls("/batch/read")) <= 8


async def test_calls_in_flight_together_never_exceed_hubspots_rolling_window(
    crm: HubSpotCrm, hubspot_sim: SimServer
) -> None:
    """Four times the limit at once, as the executor sends a batch's chunks: every call gets through
    and HubSpot, which counts each call as it arrives, never sees more than the limit in any window
    of its own clock (nor answers 429)."""
    hubspot_sim.records(*({"id": str(700 + n), "properties": {"city": "Oslo"}} for n in range(20)))
    limited = HubSpotCrm(HubSpotClient(hubspot_sim.url, TOKEN, requests_per_window=5, window_seconds=0.5))
    hubspot_sim.rate(5, window=0.5)
    try:
        reads = await asyncio.gather(*(limited.read(C, [str(700 + n)], ["city"]) for n in range(20)))
    finally:
        hubspot_sim.rate(None)
        await limited.close()
    assert [r[str(700 + n)].properties for n, r in enumerate(reads)] == [{"city": "Oslo"}] * 20
    calls = hubspot_sim.calls("/batch/read")
    assert len(calls) == 20
    assert not [c for c in calls if c.get("status") == 429]
    arrived = sorted(c["at"] for c in calls)
    assert max(sum(1 for t in arrived if start <= t < start + 0.5) for start in arrived) <= 5


async def test_a_wrong_token_is_a_refusal_not_an_outage(hubspot_sim: SimServer) -> None:
    adapter = HubSpotCrm(HubSpotClient(hubspot_sim.url, "wrong", attempts=2))
    try:
        with pytest.raises(CrmRefusedError, match="401"):
            await adapter.read(C, ["1"], ["city"])
    finally:
        await adapter.close()


def test_the_simulator_refuses_what_hubspot_would(hubspot_sim: SimServer) -> None:
    hubspot_sim.reset()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{hubspot_sim.url}/crm/v3/objects/contacts"
    bad = [
        (
            "POST",
            "/batch/read",
            {"inputs": [{"id": "1"}], "properties": ["x"]},
        ),  # propertiesWithHistory missing
        ("POST", "/batch/update", {"inputs": [{"id": "1", "properties": {"n": 5}}]}),  # values are strings
        ("POST", "/merge", {"primaryObjectId": "1"}),
        ("GET", "/1?archived=maybe", None),
    ]
    for method, path, body in bad:
        response = httpx.request(method, f"{url}{path}", json=body, headers=auth)
        assert response.status_code == 400, (path, response.text)
    assert len(hubspot_sim.log()["violations"]) == len(bad)
    hubspot_sim.reset()
