"""`make up`'s demo feed shows the five scenarios through every running service: each step ends
where the default policy says (applied, or waiting in the review queue), and the look-alikes beside
the duplicates are left alone; and the sandbox behaves like a CRM: a change made in it after a
proposal reaches ingest as HubSpot's webhook, and the proposal approved after it ends as a conflict."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
from changegate.cli.demo import SCENARIOS, steps
from changegate.cli.demo_feed import ReviewTarget
from changegate.cli.devstack import DevStack
from changegate.cli.main import _demo_stream
from changegate.core.contracts import ObjectType
from changegate.executor.crm import sandbox
from helpers import eventually, review_items


async def test_one_round_of_the_demo_feed_shows_every_scenario(
    stack: DevStack, client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    review = f"http://127.0.0.1:{stack.ports['review-api']}"
    audit = f"http://127.0.0.1:{stack.ports['audit']}"
    run = steps(seed=11, run="e2edemo")
    round_ = [next(run) for _ in SCENARIOS]
    # The feed's own generator with the same seed and run id replays exactly these steps.
    assert [s.scenario for s in round_] == [
        "enrichment",
        "duplicates",
        "lifecycle",
        "owner",
        "verification",
        "conflict",
    ]
    reviewer = ReviewTarget(review, stack.issued["alice@example.com"])
    sent = await _demo_stream(
        stack.settings(), 6, 0, seed=11, run="e2edemo", ingest=stack.ingest_target(), review=reviewer
    )
    assert sent == 6

    async def pending(record_id: str) -> list[dict[str, Any]]:
        return await review_items(client, review, record_id)

    async def audited(record_id: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = (
            await client.get(f"{audit}/audit/entries", params={"record_id": record_id})
        ).json()
        return rows

    enrichment, duplicates, lifecycle, owner, verification, conflict = round_
    [contact] = enrichment.records
    if enrichment.records[contact]["jobtitle"] == "":
        await eventually(lambda: audited(contact), lambda r: len(r) == 1, what="fill applied")
    else:
        await eventually(lambda: pending(contact), lambda q: len(q) == 1, what="overwrite waiting")
    a, b, *look_alikes = duplicates.records
    assert look_alikes == duplicates.look_alikes
    merge = await eventually(lambda: pending(b), lambda q: len(q) == 1, what="merge waiting")
    assert (merge[0]["kind"], merge[0]["queue"]) == ("merge", "dedup")
    assert {merge[0]["record_id"], *merge[0]["other_record_ids"]} == {a, b}
    lead, scored = lifecycle.records
    await eventually(lambda: audited(lead), lambda r: len(r) == 1, what="defined event applied")
    ai = await eventually(lambda: pending(scored), lambda q: len(q) == 1, what="AI stage waiting")
    assert ai[0]["trigger"] == "ai_score"
    [moved] = owner.records
    moving = await eventually(lambda: pending(moved), lambda q: len(q) == 1, what="owner change waiting")
    assert moving[0]["kind"] == "owner_reassignment"
    good, risky = verification.records
    await eventually(lambda: audited(good), lambda r: len(r) == 1, what="valid email applied")
    catch_all = await eventually(lambda: pending(risky), lambda q: len(q) == 1, what="catch-all waiting")
    assert catch_all[0]["changes"][0]["proposed"] == "catch_all"

    # The look-alikes (a household member, a namesake, a colleague) reached the detector and
    # were left alone: no merge names them.
    known = await eventually(
        lambda: _known_to_detector(db, look_alikes),
        lambda found: found == set(look_alikes),
        what="look-alikes seen by the detector",
    )
    assert known == set(look_alikes)
    for record_id in look_alikes:
        assert [i for i in await pending(record_id) if i["proposal"]["kind"] == "merge"] == []

    # Every event went through the ingest service as a signed webhook, none straight onto the topic.
    exposition = (await client.get(f"http://127.0.0.1:{stack.ports['ingest']}/metrics")).text
    produced = {
        line.split('source="', 1)[1].split('"', 1)[0]
        for line in exposition.splitlines()
        if line.startswith("changegate_ingest_events_produced_total{") and not line.endswith(" 0.0")
    }
    assert produced == {"hubspot", "clay", "typeform", "scoring", "zerobounce", "neverbounce"}, exposition[
        -3000:
    ]

    # The conflict: the rep's title is in the sandbox CRM, reached the detector as HubSpot's webhook,
    # and the approval that came after it wrote nothing: the execution is a conflict, and the change
    # is back in review with the rep's title as the previous value.
    [(edited, change)] = conflict.crm_change.items()
    rep = change["jobtitle"]
    assert (await sandbox.get_record(db, ObjectType.CONTACT, edited) or {})["jobtitle"] == rep
    known = await db.fetchval(
        "SELECT properties->>'jobtitle' FROM detector_records WHERE record_id = $1", edited
    )
    assert known == rep
    decided = await review_items(client, review, edited, status="approved")
    assert [i["execution"]["status"] for i in decided] == ["conflict"], decided
    refreshed = await eventually(lambda: pending(edited), lambda q: len(q) == 1, what="refreshed proposal")
    assert refreshed[0]["changes"][0]["previous"] == rep
    assert refreshed[0]["queue"] == "conflicts"
    # Nothing was written: the log holds the conflict, and no applied change.
    assert [r["mode"] for r in await audited(edited)] == ["conflict"]


async def _known_to_detector(db: asyncpg.Pool, record_ids: list[str]) -> set[str]:
    rows = await db.fetch(
        "SELECT record_id FROM detector_records WHERE record_id = ANY($1::text[])", record_ids
    )
    return {r["record_id"] for r in rows}
