"""Which open proposal a newer one retires (against PostgreSQL: the rows lock and upsert)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
from changegate.core.contracts import (
    FieldChange,
    ObjectType,
    Proposal,
    ProposalKind,
    ProposalSource,
    Trigger,
)
from changegate.core.db import migrate, migrate_core
from changegate.detector.supersede import supersede


def _proposal(kind: ProposalKind, **fields: str) -> Proposal:
    changes = [FieldChange(field=f, previous=None, proposed=v) for f, v in fields.items()]
    return Proposal(
        proposal_id=uuid.uuid4(),
        kind=kind,
        object_type=ObjectType.CONTACT,
        record_id="r1",
        changes=changes,
        source=ProposalSource(
            system="s", event_id=str(uuid.uuid4()), detector="d", detector_version="1", trigger=Trigger.RULE
        ),
        confidence=0.9,
        rationale="r",
        proposed_at=datetime(2026, 11, 24, tzinfo=UTC),
    )


async def test_only_a_covered_proposal_of_the_same_kind_is_retired(pool: asyncpg.Pool) -> None:
    await migrate_core(pool)
    await migrate(pool, "detector", "changegate.detector.migrations")
    two_fields = _proposal(ProposalKind.FIELD_UPDATE, jobtitle="CTO", city="Oslo")
    owner = _proposal(ProposalKind.OWNER_REASSIGNMENT, hubspot_owner_id="o-1")
    async with pool.acquire() as conn, conn.transaction():
        assert await supersede(conn, two_fields) == []
        assert await supersede(conn, owner) == []
        # Covers only one of the two fields: the older one stays open (its city change is not re-proposed).
        partial = _proposal(ProposalKind.FIELD_UPDATE, jobtitle="CEO")
        assert await supersede(conn, partial) == []
        # Another kind on the owner field does not retire the owner reassignment.
        assert await supersede(conn, _proposal(ProposalKind.FIELD_UPDATE, hubspot_owner_id="o-2")) == []
        # Covers both fields of the first (and the one field of the partial one): both are retired,
        # once each, and their rows are gone; the owner reassignment stays.
        full = _proposal(ProposalKind.FIELD_UPDATE, jobtitle="CFO", city="Bergen")
        retired = await supersede(conn, full)
        assert {d.proposal.proposal_id for d in retired} == {two_fields.proposal_id, partial.proposal_id}
        assert len(retired) == 2
        assert retired[0].outcome.value == "superseded"
        assert retired[0].final_changes == []
        left = await conn.fetchval(
            "SELECT count(*) FROM detector_open_proposals WHERE proposal_id = $1", two_fields.proposal_id
        )
        assert left == 0
        # A redelivered proposal does not retire itself.
        assert await supersede(conn, full) == []
