"""The HubSpot adapter against the simulator, which validates every request and answer against
HubSpot's own OpenAPI documents: compare-and-set, 207 partial results, merges into a new id,
owners, and retries on 429 / 423 / 5xx."""

from __future__ import annotations

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
    RecordNotFoundError,
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


async def test_compare_and_set_reads_compares_writes_and_confirms(
    crm: HubSpotCrm, hubspot_sim: SimServer
) -> None:
    hubspot_sim.records(
        {"id": "101", "properties": {"jobtitle": "", "email": "Ada@Example.com", "numemployees": "250"}}
    )
    observed: list[object] = []

    async def before(values: dict[str, PropertyValue]) -> None:
        observed.append(values)

    applied = await crm.write(
        C, "101", [_change("jobtitle", None, "CTO"), _change("numemployees", 250, 300)], before
    )
    assert applied.status is WriteStatus.APPLIED
    assert observed == [{"jobtitle": "", "numemployees": "250"}]
    assert applied.note is None
    assert applied.response_ids[0].startswith("hubspot:contacts/101@")
    assert (hubspot_sim.record("101") or {})["properties"]["jobtitle"] == "CTO"
    # HubSpot stores every value as a string: 300 and "300" are the same; an email ignores case.
    noop = await crm.write(
        C, "101", [_change("numemployees", 1, 300.0), _change("email", None, "ada@example.COM")]
    )
    assert noop.status is WriteStatus.NOOP
    stale = await crm.write(C, "101", [_change("jobtitle", "Engineer", "VP")])
    assert (stale.status, stale.conflicts, stale.current) == (
        WriteStatus.CONFLICT,
        ["jobtitle"],
        {"jobtitle": "CTO"},
    )
    assert len(hubspot_sim.calls("/batch/update")) == 1  # neither the noop nor the conflict wrote
    with pytest.raises(RecordNotFoundError):
        await crm.write(C, "999", [_change("jobtitle", None, "x")])


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
    assert [len(c["body"]["inputs"]) for c in reads] == [100, 51]  # at most 100 inputs a batch


async def test_a_207_refusal_of_our_update_is_a_refusal(crm: HubSpotCrm, hubspot_sim: SimServer) -> None:
    hubspot_sim.records({"id": "301", "properties": {"phone": ""}})
    hubspot_sim.fault(path="/batch/update", fail_ids=["301"])
    with pytest.raises(CrmRefusedError, match="VALIDATION_ERROR"):
        await crm.write(C, "301", [_change("phone", None, "+1 415")])


async def test_a_merge_gets_a_new_id_that_both_old_ids_resolve_to(
    crm: HubSpotCrm, hubspot_sim: SimServer
) -> None:
    hubspot_sim.records(
        {"id": "401", "properties": {"email": "a@x.io", "phone": ""}},
        {"id": "402", "properties": {"email": "a@x.io", "phone": "+1"}},
        {"id": "403", "properties": {"email": "a@x.io"}},
    )
    merged = await crm.merge(C, "401", ["402", "403"])
    assert merged.merged_id not in {"401", "402", "403"}
    read = await crm.read(C, ["401", "402", "403"], ["phone"])
    assert {state.record_id for state in read.values()} == {merged.merged_id}
    assert read["401"].properties == {"phone": "+1"}  # empty on the primary: the other's value
    assert len(hubspot_sim.calls("/merge")) == 2  # HubSpot merges two at a time


async def test_owners_are_validated_through_the_owners_api(crm: HubSpotCrm, hubspot_sim: SimServer) -> None:
    hubspot_sim.owners(
        {"id": "51", "email": "west@x.io"}, {"id": "52", "email": "gone@x.io", "archived": True}
    )
    assert await crm.owner_status("51") is OwnerStatus.ACTIVE
    assert await crm.owner_status("52") is OwnerStatus.ARCHIVED
    assert await crm.owner_status("53") is OwnerStatus.UNKNOWN
    assert await crm.owner_status("owner-west") is OwnerStatus.UNKNOWN  # not a HubSpot owner id
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
