"""The detector owns a proposal's lifecycle: a proposal is open from its detection (or from the
executor's conflict re-proposal) until its decision closes it. A newer proposal for the same record
and field supersedes the older one only while that one is still open: it is retired with a
``superseded`` decision, so review-api takes it off the queue and policy never routes it. A merge
proposal names a whole duplicate cluster: a newer one for a cluster that grew retires every open
merge proposal that shares a record with it."""

from __future__ import annotations

import uuid
from typing import Any

from changegate.core import outbox
from changegate.core.contracts import (
    Decider,
    Decision,
    DecisionOutcome,
    FieldChange,
    ObjectType,
    Proposal,
    ProposalKind,
)
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.envelope import Envelope, make_envelope
from changegate.core.db import DbConn
from changegate.core.signing import SigningKey
from changegate.core.topics import Topic, TopicNames

SERVICE = "detector"
SUPERSEDE_NAMESPACE = uuid.UUID("5e3c1a2b-7d4f-4e6a-9b8c-1f2e3d4c5b6a")


async def close(conn: DbConn, outcomes: list[tuple[uuid.UUID, str]]) -> list[str]:
    """Decisions end their proposals' lifecycles: no longer open, and never again. The outcomes of
    the proposals closed now (one closed before — a redelivered decision — is not counted; of one
    proposal decided twice in ``outcomes``, the first decision counts)."""
    ids = [pid for pid, _ in outcomes]
    await conn.execute("DELETE FROM detector_open_proposals WHERE proposal_id = ANY($1::uuid[])", ids)
    await conn.execute("DELETE FROM detector_open_merges WHERE proposal_id = ANY($1::uuid[])", ids)
    first = list({pid: outcome for pid, outcome in reversed(outcomes)}.items())
    rows = await conn.fetch(
        "INSERT INTO detector_closed_proposals (proposal_id, outcome)"
        " SELECT * FROM unnest($1::uuid[], $2::text[]) ON CONFLICT DO NOTHING RETURNING outcome",
        [pid for pid, _ in first],
        [outcome for _, outcome in first],
    )
    return [r["outcome"] for r in rows]


async def is_closed(conn: DbConn, proposal_id: uuid.UUID) -> bool:
    """Decided already: re-detecting the same proposal (same id) raises nothing new."""
    return bool(
        await conn.fetchval("SELECT 1 FROM detector_closed_proposals WHERE proposal_id = $1", proposal_id)
    )


async def supersede(conn: DbConn, proposal: Proposal, *, undecided: bool = False) -> list[Decision]:
    """Record ``proposal`` as the open one for each field it changes (for a merge: for each record
    it names); return decisions retiring the older open proposals it replaces. A proposal already
    decided is not opened again (re-detection, a redelivered review request); ``undecided``: the
    caller checked that it is not."""
    return await open_unless_decided(conn, proposal, checked=undecided) or []


async def open_unless_decided(
    conn: DbConn, proposal: Proposal, *, checked: bool = False
) -> list[Decision] | None:
    """``supersede``, or None if ``proposal`` was decided before (``checked``: the caller knows it
    was not). For a field update, whether it was decided, the open proposals it replaces and its
    own opening are one statement (every part sees the table as it was before it)."""
    if proposal.kind is ProposalKind.MERGE:
        if not checked and await is_closed(conn, proposal.proposal_id):
            return None
        return await _supersede_merges(conn, proposal)
    fields = {c.field for c in proposal.changes}
    retired: dict[uuid.UUID, Proposal] = {}
    rows = await conn.fetch(
        "WITH d AS (SELECT $5::bool AND EXISTS"
        " (SELECT 1 FROM detector_closed_proposals WHERE proposal_id = $4) AS decided),"
        " old AS (SELECT proposal_id, proposal FROM detector_open_proposals"
        " WHERE object_type = $1 AND record_id = $2 AND field = ANY($3::text[]) AND proposal_id <> $4"
        " AND NOT (SELECT decided FROM d) FOR UPDATE),"
        " opened AS (INSERT INTO detector_open_proposals (object_type, record_id, field, proposal_id,"
        " proposal) SELECT $1, $2, f, $4, $6 FROM unnest($3::text[]) AS f WHERE NOT (SELECT decided FROM d)"
        " ON CONFLICT (object_type, record_id, field) DO UPDATE"
        " SET proposal_id = EXCLUDED.proposal_id, proposal = EXCLUDED.proposal)"
        " SELECT d.decided, old.proposal_id, old.proposal FROM d LEFT JOIN old ON true",
        proposal.object_type.value,
        proposal.record_id,
        sorted(fields),
        proposal.proposal_id,
        not checked,
        proposal.model_dump(mode="json"),
    )
    if rows[0]["decided"]:
        return None
    for row in rows:
        if row["proposal_id"] is None:
            continue
        older = Proposal.model_validate(row["proposal"])
        # Only a proposal of the same kind whose every change the newer one covers is replaced;
        # otherwise retiring it would drop a change nobody re-proposed. (Its rows were taken over
        # by the newer one above; what closing it deletes is whatever else it held.)
        if older.kind is proposal.kind and {c.field for c in older.changes} <= fields:
            retired[older.proposal_id] = older
    await _close_superseded(conn, list(retired))
    because = f"superseded by {proposal.proposal_id} (event {proposal.source.event_id})"
    return [_retirement(older, str(proposal.proposal_id), because) for older in retired.values()]


_OPEN_MANY = """
WITH p AS (SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::uuid[], $5::jsonb[])
           AS p(n, object_type, record_id, proposal_id, proposal)),
f AS (SELECT * FROM unnest($6::int[], $7::text[]) AS f(n, field)),
d AS (SELECT p.n, EXISTS (SELECT 1 FROM detector_closed_proposals c WHERE c.proposal_id = p.proposal_id)
      AS decided FROM p),
old AS (SELECT f.n, o.proposal_id, o.proposal FROM f JOIN p USING (n) JOIN d USING (n)
        JOIN detector_open_proposals o ON o.object_type = p.object_type AND o.record_id = p.record_id
        AND o.field = f.field AND o.proposal_id <> p.proposal_id WHERE NOT d.decided FOR UPDATE OF o),
opened AS (INSERT INTO detector_open_proposals (object_type, record_id, field, proposal_id, proposal)
           SELECT p.object_type, p.record_id, f.field, p.proposal_id, p.proposal
           FROM f JOIN p USING (n) JOIN d USING (n) WHERE NOT d.decided
           ON CONFLICT (object_type, record_id, field) DO UPDATE
           SET proposal_id = EXCLUDED.proposal_id, proposal = EXCLUDED.proposal)
SELECT d.n, d.decided, old.proposal_id, old.proposal FROM d LEFT JOIN old USING (n) ORDER BY d.n
"""


async def open_many_unless_decided(conn: DbConn, proposals: list[Proposal]) -> list[list[Decision] | None]:
    """``open_unless_decided`` for field updates of distinct records, in one statement: none of
    them touches another's rows, so this is what opening them one after the other does. Per
    proposal, in order: the retirements it makes, or None if it was decided before."""
    if not proposals:
        return []
    keys = {(p.object_type, p.record_id) for p in proposals}
    if len(keys) < len(proposals) or any(p.kind is ProposalKind.MERGE for p in proposals):
        raise ValueError("open_many_unless_decided takes field updates of distinct records")
    fields = [sorted({c.field for c in p.changes}) for p in proposals]
    rows = await conn.fetch(
        _OPEN_MANY,
        list(range(len(proposals))),
        [p.object_type.value for p in proposals],
        [p.record_id for p in proposals],
        [p.proposal_id for p in proposals],
        [p.model_dump(mode="json") for p in proposals],
        [n for n, names in enumerate(fields) for _ in names],
        [name for names in fields for name in names],
    )
    decided: dict[int, bool] = {}
    retired: list[dict[uuid.UUID, Proposal]] = [{} for _ in proposals]
    for row in rows:
        n = row["n"]
        decided[n] = row["decided"]
        if row["proposal_id"] is None:
            continue
        older = Proposal.model_validate(row["proposal"])
        # As in open_unless_decided: only a proposal of the same kind it covers in full is replaced.
        if older.kind is proposals[n].kind and {c.field for c in older.changes} <= set(fields[n]):
            retired[n][older.proposal_id] = older
    await _close_superseded(conn, [pid for found in retired for pid in found])
    out: list[list[Decision] | None] = []
    for n, proposal in enumerate(proposals):
        if decided[n]:
            out.append(None)
            continue
        because = f"superseded by {proposal.proposal_id} (event {proposal.source.event_id})"
        out.append([_retirement(older, str(proposal.proposal_id), because) for older in retired[n].values()])
    return out


def _members(merge: Proposal) -> list[str]:
    return sorted({merge.record_id, *merge.other_record_ids})


async def _supersede_merges(conn: DbConn, merge: Proposal) -> list[Decision]:
    """The detector proposes a merge of every current member of a cluster, so a newer merge that
    shares a record with an open one (its cluster grew, or absorbed another) covers it."""
    rows = await conn.fetch(
        "SELECT proposal_id, proposal FROM detector_open_merges"
        " WHERE object_type = $1 AND members && $2::text[] AND proposal_id <> $3 FOR UPDATE",
        merge.object_type.value,
        _members(merge),
        merge.proposal_id,
    )
    retired = [Proposal.model_validate(r["proposal"]) for r in rows]
    await _close_superseded(conn, [p.proposal_id for p in retired])
    await conn.execute(
        "INSERT INTO detector_open_merges (proposal_id, object_type, members, proposal)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (proposal_id) DO NOTHING",
        merge.proposal_id,
        merge.object_type.value,
        _members(merge),
        merge.model_dump(mode="json"),
    )
    because = f"superseded by {merge.proposal_id}: the cluster now also holds other records"
    return [_retirement(older, str(merge.proposal_id), because) for older in retired]


def retirement_messages(
    names: TopicNames, signer: SigningKey, record_id: str, retired: list[Decision]
) -> list[tuple[str, str | None, Envelope[Any]]]:
    """Retirements as the outbox takes them: signed ``superseded`` decisions."""
    return [
        (
            names(Topic.DECISIONS),
            record_id,
            make_envelope(
                signer.sign(decision),
                service=SERVICE,
                correlation_id=decision.proposal.proposal_id,
                dedup_key=str(decision.decision_id),
            ),
        )
        for decision in retired
    ]


async def enqueue_retirements(
    conn: DbConn, names: TopicNames, signer: SigningKey, record_id: str, retired: list[Decision]
) -> None:
    """Retirements go out in the transaction that made them."""
    await outbox.enqueue_many(conn, SERVICE, retirement_messages(names, signer, record_id, retired))


async def retire_merged_away(conn: DbConn, merge: Proposal) -> list[Decision]:
    """After a merge was applied, the records merged away are gone: open merges naming them are
    retired (the survivor's cluster proposes again what still applies to it), and so are their
    open field changes - each re-targeted first to the survivor (``retarget``), unless it changes
    nothing there or the survivor has a newer open proposal for the same field."""
    rows = await conn.fetch(
        "SELECT DISTINCT proposal_id, proposal FROM detector_open_proposals"
        " WHERE object_type = $1 AND record_id = ANY($2::text[])",
        merge.object_type.value,
        merge.other_record_ids,
    )
    merges = await conn.fetch(
        "SELECT proposal_id, proposal FROM detector_open_merges"
        " WHERE object_type = $1 AND members && $2::text[] AND proposal_id <> $3",
        merge.object_type.value,
        merge.other_record_ids,
        merge.proposal_id,
    )
    found = {r["proposal_id"]: Proposal.model_validate(r["proposal"]) for r in [*rows, *merges]}
    retired = list(found.values())
    await _close_superseded(conn, [p.proposal_id for p in retired])
    return [
        _retirement(
            older,
            f"merged|{merge.proposal_id}",
            f"{', '.join(merge.other_record_ids)} merged into {merge.record_id}",
        )
        for older in retired
    ]


RETARGET_NAMESPACE = "retarget"


async def retarget(
    conn: DbConn, merge: Proposal, retired: list[Decision], survivor: dict[str, Any]
) -> list[Proposal]:
    """The field changes of retired proposals on merged-away records, proposed again for the
    survivor: same kind, source and confidence, with the survivor's current value as ``previous``
    (so compare-and-set guards the survivor's value, not the merged record's). A change the
    survivor already holds is dropped, and so is a field for which the survivor has an open
    proposal made later than the merged record's, and an email verification of another address
    than the survivor's."""
    gone = set(merge.other_record_ids)
    newer = {
        r["field"]: Proposal.model_validate(r["proposal"]).proposed_at
        for r in await conn.fetch(
            "SELECT field, proposal FROM detector_open_proposals WHERE object_type = $1 AND record_id = $2",
            merge.object_type.value,
            merge.record_id,
        )
    }
    out = []
    for decision in retired:
        older = decision.proposal
        if older.kind is ProposalKind.MERGE or older.record_id not in gone:
            continue
        verified = older.evidence.get("email") if older.kind is ProposalKind.EMAIL_VERIFICATION else None
        if (
            verified is not None
            and str(verified).strip().lower() != str(survivor.get("email") or "").strip().lower()
        ):
            continue  # a verdict on the merged record's address says nothing of the survivor's
        changes = [
            FieldChange(field=c.field, previous=survivor.get(c.field), proposed=c.proposed)
            for c in older.changes
            if survivor.get(c.field) != c.proposed
            and not (c.field in newer and newer[c.field] > older.proposed_at)
        ]
        if not changes:
            continue
        moved = {
            "record_id": older.record_id,
            "proposal_id": str(older.proposal_id),
            "merge": str(merge.proposal_id),
        }
        out.append(
            older.model_copy(
                update={
                    "proposal_id": Proposal.make_id(
                        older.source.detector,
                        merge.record_id,
                        changes,
                        f"{RETARGET_NAMESPACE}|{older.proposal_id}",
                    ),
                    "record_id": merge.record_id,
                    "changes": changes,
                    "rationale": f"{older.rationale} (re-targeted: {older.record_id} was merged into"
                    f" {merge.record_id}; previous values are the survivor's)",
                    "evidence": {**older.evidence, "retargeted_from": moved},
                    "proposed_at": utcnow(),
                }
            )
        )
    return out


async def retire_merges_naming(
    conn: DbConn, object_type: ObjectType, record_ids: list[str], by: str, explanation: str
) -> list[Decision]:
    """Open merge proposals naming any of ``record_ids`` retired: a record left its cluster and no
    newer proposal covers what is left of it."""
    rows = await conn.fetch(
        "SELECT proposal_id, proposal FROM detector_open_merges"
        " WHERE object_type = $1 AND members && $2::text[]",
        object_type.value,
        record_ids,
    )
    retired = [Proposal.model_validate(r["proposal"]) for r in rows]
    await _close_superseded(conn, [p.proposal_id for p in retired])
    return [_retirement(older, by, explanation) for older in retired]


async def _close_superseded(conn: DbConn, proposal_ids: list[uuid.UUID]) -> None:
    if not proposal_ids:
        return
    await conn.execute(
        "DELETE FROM detector_open_proposals WHERE proposal_id = ANY($1::uuid[])", proposal_ids
    )
    await conn.execute("DELETE FROM detector_open_merges WHERE proposal_id = ANY($1::uuid[])", proposal_ids)
    await conn.executemany(
        "INSERT INTO detector_closed_proposals (proposal_id, outcome) VALUES ($1, 'superseded')"
        " ON CONFLICT DO NOTHING",
        [(pid,) for pid in proposal_ids],
    )


def _retirement(older: Proposal, by: str, explanation: str) -> Decision:
    """The ``superseded`` decision retiring ``older``; its id is deterministic in what retired it."""
    return Decision(
        decision_id=uuid.uuid5(SUPERSEDE_NAMESPACE, f"{older.proposal_id}|{by}"),
        proposal=older,
        outcome=DecisionOutcome.SUPERSEDED,
        decided_by=Decider(kind="system", identity="detector"),
        decided_at=utcnow(),
        explanation=explanation,
    )
