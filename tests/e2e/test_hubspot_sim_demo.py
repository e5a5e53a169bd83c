"""`changegate dev up --crm hubspot-sim --demo`: the whole pipeline against the HubSpot simulator,
fed by the demo through the simulator's own signed webhooks — every scenario ends executed in the
simulator (its records and the audit log say so), merges through HubSpot's merge API, owners by
HubSpot owner id, and a change made in the simulator after a proposal ends as a conflict."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from changegate.cli.demo import DEMO_ENV, OWNER_WEST, SCENARIOS, steps
from changegate.cli.demo_feed import ReviewTarget, demo_stream
from changegate.cli.devstack import DevStack
from changegate.hubspot_sim.server import SimClient
from helpers import approve_and_execute, audited, eventually, review_items, running_stack

SEED, RUN = 5, "simdemo"


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, database_url: str) -> Iterator[DevStack]:
    with running_stack(
        kafka_bootstrap,
        database_url,
        crm="hubspot-sim",
        sim_contacts="300",
        CHANGEGATE_OWNER=DEMO_ENV["CHANGEGATE_OWNER"],
    ) as running:
        yield running


async def test_every_scenario_is_executed_in_the_simulator(
    stack: DevStack, client: httpx.AsyncClient, specs_dir: Any
) -> None:
    sim = SimClient(stack.simulator_url)
    info = sim.info()
    assert info["records"]["contacts"] == 300  # seeded, before any webhook subscription saw them
    assert info["validating"] is (specs_dir / "hubspot" / "crm-contacts.v3.json").is_file(), info[
        "validation"
    ]
    review = f"http://127.0.0.1:{stack.ports['review-api']}"
    ids: dict[str, str] = {}
    lines: list[str] = []
    sent = await demo_stream(
        stack.settings(),
        len(SCENARIOS),
        0,
        lines.append,
        seed=SEED,
        run=RUN,
        ingest=stack.ingest_target(),
        crm=stack.crm_target(),
        review=ReviewTarget(review, stack.issued["bob@example.com"]),
        ids=ids,
    )
    assert sent == len(SCENARIOS)
    said = "\n".join(lines)
    enrichment, duplicates, lifecycle, owner, verification, conflict = [
        s for s, _ in zip(steps(SEED, RUN), SCENARIOS, strict=False)
    ]
    # The simulator gave the records its own ids (HubSpot's), and they are what the feed showed.
    assert set(ids) == {
        r for s in (enrichment, duplicates, lifecycle, owner, verification, conflict) for r in s.records
    }
    assert all(crm_id.isdigit() and crm_id not in ids for crm_id in ids.values())

    def held(demo_id: str) -> dict[str, Any]:
        found = sim.record(ids[demo_id])
        assert found is not None, demo_id
        props: dict[str, Any] = found["properties"]
        return props

    async def rows(demo_id: str) -> list[dict[str, Any]]:
        return await eventually(
            lambda: audited(client, stack, ids[demo_id]), lambda r: len(r) >= 1, what=f"{demo_id} audited"
        )

    # 1. enrichment: a fill applies by itself, an overwrite once approved
    [contact] = enrichment.records
    [clay] = [e for e in enrichment.events if e.source_system == "clay"]
    if enrichment.records[contact]["jobtitle"]:
        item = await approve_and_execute(client, stack, ids[contact], "field_update")
        assert item["execution"]["status"] == "applied"
    assert [r["field"] for r in await rows(contact)] == ["jobtitle"]
    assert held(contact)["jobtitle"] == clay.properties["jobtitle"]

    # 2. duplicates: the merge, approved, goes through HubSpot's merge API (a new id for both)
    a, b, *look_alikes = duplicates.records
    item = await approve_and_execute(client, stack, ids[b], "merge")
    assert item["execution"]["status"] == "applied"
    merged = sim.record(ids[a]) or {}
    assert merged["id"] == (sim.record(ids[b]) or {})["id"] not in (ids[a], ids[b])
    assert sim.calls("/crm/v3/objects/contacts/merge")
    # Either record may survive (survivorship weighs completeness, then creation and activity times,
    # which the simulator stamps to the millisecond as requests arrive): the row is the survivor's.
    survivor = item["record_id"]
    assert {survivor, *item["other_record_ids"]} == {ids[a], ids[b]}
    merge_rows = await eventually(
        lambda: audited(client, stack, survivor), lambda r: len(r) >= 1, what=f"{survivor} audited"
    )
    assert {r["field"] for r in merge_rows} >= {"hs_merged_object_ids"}
    for look_alike in look_alikes:
        assert await review_items(client, review, ids[look_alike], kind="merge") == []

    # 3. lifecycle: the defined event applies by itself; the AI score's stage waits for a human
    lead, scored = lifecycle.records
    assert held(lead)["lifecyclestage"] == "marketingqualifiedlead"
    assert [r["field"] for r in await rows(lead)] == ["lifecyclestage"]
    item = await approve_and_execute(client, stack, ids[scored], "lifecycle_transition")
    assert held(scored)["lifecyclestage"] == item["changes"][0]["proposed"]

    # 4. owner: approved, the HubSpot owner id is validated (owners API) and written
    [moved] = owner.records
    item = await approve_and_execute(client, stack, ids[moved], "owner_reassignment")
    assert item["execution"]["status"] == "applied"
    assert held(moved)["hubspot_owner_id"] == OWNER_WEST
    assert sim.calls(f"/crm/v3/owners/{OWNER_WEST}")

    # 5. verification: valid applies by itself; catch-all once approved
    good, risky = verification.records
    assert held(good)["email_status"] == "valid"
    item = await approve_and_execute(client, stack, ids[risky], "email_verification")
    assert held(risky)["email_status"] == "catch_all"
    for demo_id in (moved, good, risky):
        assert await rows(demo_id)

    # 6. conflict: the rep's change in the simulator stays; the approval after it wrote nothing
    [(edited, change)] = conflict.crm_change.items()
    assert held(edited)["jobtitle"] == change["jobtitle"]
    [decided] = await review_items(client, review, ids[edited], status="approved")
    assert decided["execution"]["status"] == "conflict"
    assert "the approved change was NOT written over the newer value" in said, said

    # Every request the adapter and the demo made is one HubSpot's documents accept; every change
    # reached ingest as a signed webhook (none refused), the executor's own ones as echo.
    assert sim.log()["violations"] == []
    info = sim.info()
    assert info["webhook_failures"] == []
    assert info["webhooks_delivered"] > 0
    ingest = (await client.get(f"http://127.0.0.1:{stack.ports['ingest']}/metrics")).text
    refused = [
        line
        for line in ingest.splitlines()
        if line.startswith(
            ("changegate_ingest_signature_failures_total{", "changegate_ingest_refused_total{")
        )
        and 'source="hubspot"' in line
        and not line.endswith(" 0.0")
    ]
    assert refused == []
    assert 'changegate_ingest_requests_total{source="hubspot",status="200"}' in ingest
    detector = (await client.get(f"http://127.0.0.1:{stack.ports['detector']}/metrics")).text
    echoes = [
        line
        for line in detector.splitlines()
        if line.startswith("changegate_detector_skipped_total{") and 'reason="echo"' in line
    ]
    assert echoes, "the executor's writes did not come back as echo"
    assert float(echoes[0].rsplit(" ", 1)[1]) > 0
