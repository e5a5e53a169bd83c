"""Per-event detection: fold the event into record state and emit proposals, in one transaction."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime
from typing import Any

import asyncpg
from changegate.core import outbox
from changegate.core.contracts import CrmEvent, CrmEventKind, Decision, Proposal
from changegate.core.contracts.base import is_empty
from changegate.core.contracts.envelope import Envelope, make_envelope
from changegate.core.db import DbConn, claim_events
from changegate.core.kafka import YIELD_EVERY
from changegate.core.logging import get_logger
from changegate.core.signing import SigningKey
from changegate.core.topics import Topic, TopicNames
from changegate.detector import dedup, lifecycle, owner, reliability, state, verification
from changegate.detector.changelog import LATE, Changed, Late, RecordFeed, changed_by
from changegate.detector.enrichment import propose_enrichment
from changegate.detector.matching.engine import DuplicateFinder
from changegate.detector.matching.model import load_model
from changegate.detector.matching.normalize import identity_changed
from changegate.detector.settings import DetectorSettings
from changegate.detector.supersede import (
    enqueue_retirements,
    open_many_unless_decided,
    open_unless_decided,
    retire_merges_naming,
    retirement_messages,
)
from prometheus_client import Counter, Histogram, Info

SERVICE = "detector"
log = get_logger(__name__)

EVENTS = Counter(
    "changegate_detector_events_total", "CRM events seen, by kind and outcome", ["kind", "outcome"]
)
PROPOSALS = Counter("changegate_detector_proposals_total", "Proposals emitted, by kind", ["kind"])
DETECTION_SECONDS = Histogram(
    "changegate_detection_duration_seconds",
    "Time to detect on one event, state update included",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)

_PROPERTY_NAME = re.compile(r"[A-Za-z0-9_]+")
SKIPPED = Counter(
    "changegate_detector_skipped_total",
    "Events a detector proposed nothing for, by reason",
    ["detector", "reason"],
)
SUPERSEDED = Counter("changegate_detector_superseded_total", "Open proposals retired by a newer one")
REDETECTED = Counter(
    "changegate_detector_redetected_total", "Proposals not raised again: already decided, by kind", ["kind"]
)
CONFIDENCE_BASIS = Counter(
    "changegate_detector_confidence_basis_total",
    "Proposals by what their confidence rests on: the prior alone, or reviewers' outcomes",
    ["kind", "method"],
)
RELIABILITY_INFO = Info("changegate_detector_reliability", "The reliability table in use")


class Detector:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: DetectorSettings,
        signer: SigningKey,
        feed: RecordFeed | None = None,
    ) -> None:
        self.pool = pool
        self.feed = feed  # the changelog other replicas read (none: a replica alone, in tests)
        self.settings = settings
        self.signer = signer
        self.names = TopicNames(settings.topic_prefix)
        self.finder = DuplicateFinder(
            load_model(settings.match_model), settings.match_review_threshold, settings.match_cluster_floor
        )
        self.indexes = dedup.Indexes(settings.default_phone_region)
        model = self.finder.model
        self.model_info = {"version": model.model_version, "sha256": model.sha256}
        self.use_reliability(reliability.load(settings.reliability_file))

    def use_reliability(self, table: reliability.ReliabilityTable) -> None:
        """The table the next proposals are calibrated with (the file's, or one learnt since)."""
        self.reliability = table
        RELIABILITY_INFO.info({"version": table.version, "cells": str(len(table.cells))})

    async def load_index(self) -> int:
        """Rebuild the in-process blocking index from PostgreSQL (at start: before any event)."""
        count = await self.indexes.rebuild(self.pool)
        log.info("blocking index rebuilt", records=count)
        return count

    async def handle(self, envelope: Envelope[Any]) -> None:
        await self.handle_batch([envelope])

    async def handle_batch(self, envelopes: list[Envelope[Any]]) -> None:
        """Events in order, one transaction (one commit, one fsync) for the whole batch: claimed in
        one statement, their messages to the outbox in one."""
        started = time.perf_counter()
        outcomes: list[tuple[CrmEvent, list[Proposal] | None]] = []
        seen = self.feed.seen if self.feed else 0  # what this batch's searches see of other replicas
        async with self.pool.acquire() as conn, conn.transaction():
            fresh = await claim_events(conn, SERVICE, [e.event_id for e in envelopes])
            messages: list[tuple[str, str | None, Envelope[Any]]] = []
            changed: list[Changed] = []
            todo: list[Envelope[Any] | None] = []
            for envelope in envelopes:
                if envelope.event_id not in fresh:  # processed before (redelivery), or twice here
                    todo.append(None)
                    continue
                fresh.discard(envelope.event_id)
                todo.append(envelope)
            if all(e is None or _reads_only(e.payload) for e in todo):
                found_all = await self._handle_reading(conn, todo, messages)
            else:
                found_all = []
                for maybe in todo:
                    found_all.append(
                        None
                        if maybe is None
                        else await self._handle_one(conn, maybe.payload, maybe.occurred_at, messages)
                    )
            for envelope, found in zip(envelopes, found_all, strict=True):
                outcomes.append((envelope.payload, found))
                if found is not None:
                    changed += changed_by(envelope.payload)
            if self.feed is not None:
                messages += self.feed.messages(changed, seen)
            await outbox.enqueue_many(conn, SERVICE, messages)
        self.indexes.observe()
        elapsed = (time.perf_counter() - started) / len(envelopes)
        for event, proposals in outcomes:
            DETECTION_SECONDS.observe(elapsed)
            outcome = "duplicate" if proposals is None else "proposed" if proposals else "no_change"
            EVENTS.labels(kind=event.kind.value, outcome=outcome).inc()
            for proposal in proposals or []:
                PROPOSALS.labels(kind=proposal.kind.value).inc()
                basis = proposal.evidence.get(reliability.BASIS)
                method = basis.get("method", "none") if isinstance(basis, dict) else "none"
                CONFIDENCE_BASIS.labels(kind=proposal.kind.value, method=method).inc()

    async def _handle_reading(
        self,
        conn: DbConn,
        todo: list[Envelope[Any] | None],
        messages: list[tuple[str, str | None, Envelope[Any]]],
    ) -> list[list[Proposal] | None]:
        """A batch whose events only read record state (``_reads_only``): what one event proposes
        does not depend on what another proposed or opened, so the state of every record is read in
        one statement and the proposals opened together (``_emit_many``), as handling the events
        one by one would. Per event: the proposals emitted (None: not fresh)."""
        events = [(e.payload, e.occurred_at) for e in todo if e is not None]
        known = await state.known_properties_many(conn, [(ev.object_type, ev.record_id) for ev, _ in events])
        found = [
            self._stamped(ev, received, self._propose_from(ev, known[(ev.object_type, ev.record_id)]))
            for ev, received in events
        ]
        emitted = iter(await self._emit_many(conn, found, messages))
        return [None if e is None else next(emitted) for e in todo]

    def _stamped(self, event: CrmEvent, received: datetime, proposals: list[Proposal]) -> list[Proposal]:
        if event.requested_by:  # who caused the event caused the proposals: they may not approve them
            proposals = [p.model_copy(update={"requested_by": event.requested_by}) for p in proposals]
        # The start of the event-age SLI: the source's own time, else when changegate received it.
        happened = event.occurred_at or received
        return [
            p.model_copy(update={"source": p.source.model_copy(update={"occurred_at": happened})})
            for p in proposals
        ]

    async def _emit_many(
        self,
        conn: DbConn,
        found: list[list[Proposal]],
        messages: list[tuple[str, str | None, Envelope[Any]]],
    ) -> list[list[Proposal]]:
        """``_emit`` of each event's field updates in turn, in as few statements as records repeat:
        a record's n-th proposal of the batch is opened in the n-th statement, after its earlier
        ones (which it may supersede). Messages join ``messages`` in the order ``_emit`` adds them."""
        signed: list[list[Proposal]] = []
        for n, proposals in enumerate(found, 1):
            signed.append([self.signer.sign(reliability.calibrate(p, self.reliability)) for p in proposals])
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # signing does not suspend: let the outbox relay run
        rounds: list[list[Proposal]] = []
        seen: dict[tuple[Any, str], int] = {}
        for proposal in (p for proposals in signed for p in proposals):
            key = (proposal.object_type, proposal.record_id)
            n = seen[key] = seen.get(key, -1) + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(proposal)
        retired: dict[int, list[Decision] | None] = {}  # by id() of the signed proposal
        for group in rounds:
            for proposal, result in zip(group, await open_many_unless_decided(conn, group), strict=True):
                retired[id(proposal)] = result
        return [[p for p in proposals if self._opened(p, retired[id(p)], messages)] for proposals in signed]

    def _opened(
        self,
        proposal: Proposal,
        retired: list[Decision] | None,
        messages: list[tuple[str, str | None, Envelope[Any]]],
    ) -> bool:
        """A signed proposal after its opening: emitted (it and the retirements of the open ones it
        supersedes join ``messages``) unless decided before (``retired`` None: a replayed event, a
        rejected merge of the same records)."""
        if retired is None:
            REDETECTED.labels(kind=proposal.kind.value).inc()
            return False
        SUPERSEDED.inc(len(retired))
        messages.extend(retirement_messages(self.names, self.signer, proposal.record_id, retired))
        messages.append(self._outgoing(proposal))
        return True

    def _outgoing(self, proposal: Proposal) -> tuple[str, str | None, Envelope[Any]]:
        out = make_envelope(
            proposal,
            service=SERVICE,
            correlation_id=proposal.proposal_id,
            dedup_key=str(proposal.proposal_id),
        )
        return (self.names(Topic.PROPOSALS), proposal.record_id, out)

    async def _handle_one(
        self,
        conn: DbConn,
        event: CrmEvent,
        received: datetime,
        messages: list[tuple[str, str | None, Envelope[Any]]],
    ) -> list[Proposal]:
        """Detect; the proposals emitted (and retirements of those they supersede) join ``messages``."""
        proposals = self._stamped(event, received, await self._detect(conn, event))
        return await self._emit(conn, proposals, messages)

    async def emit(self, conn: DbConn, proposals: list[Proposal]) -> list[Proposal]:
        """Proposals sent through the outbox in ``conn``'s transaction, each retiring the open ones
        it replaces; those decided before are not raised again. The proposals sent."""
        messages: list[tuple[str, str | None, Envelope[Any]]] = []
        emitted = await self._emit(conn, proposals, messages)
        await outbox.enqueue_many(conn, SERVICE, messages)
        return emitted

    async def _emit(
        self, conn: DbConn, proposals: list[Proposal], messages: list[tuple[str, str | None, Envelope[Any]]]
    ) -> list[Proposal]:
        """Proposals not decided before are calibrated (the reliability table), signed and opened
        (retiring what they supersede); they and the retirements join ``messages``."""
        emitted = []
        for proposal in proposals:
            proposal = reliability.calibrate(proposal, self.reliability)
            proposal = self.signer.sign(proposal)  # policy and review-api refuse unsigned ones
            if self._opened(proposal, await open_unless_decided(conn, proposal), messages):
                emitted.append(proposal)
        return emitted

    async def recheck(self, late: Late) -> list[Proposal]:
        """A late check (see ``changelog``): the record's search did not see records another replica
        wrote at the same time; if one of them matches it and is not in its cluster, its duplicates
        are searched again, as for the change that searched them (same source event: a cluster
        found before is the same proposal). Claimed, so once across replicas."""
        change = late.change
        index = self.indexes.of(change.object_type)
        mine = index.features(change.record_id)
        if mine is None:
            return []  # gone since
        candidates = [c for c in index.candidates(mine, exclude=change.record_id) if c[0] in late.unseen]
        # At the floor: a candidate below the review threshold may still join through its cluster.
        found = [m.other_id for m in self.finder.matches(mine, candidates, at_least=self.finder.floor)]
        if not found:
            LATE.labels(outcome="no_match").inc()
            return []
        async with self.pool.acquire() as conn, conn.transaction():
            groups = await dedup.cluster_groups(conn, change.object_type, [change.record_id, *found])
            own = next((ids for ids in groups.values() if change.record_id in ids), None)
            if own is not None and all(rid in own for rid in found):
                LATE.labels(outcome="clustered").inc()
                return []
            if not await claim_events(conn, "detector-late", [late.event_id]):
                LATE.labels(outcome="done_elsewhere").inc()
                return []
            event = CrmEvent(
                source_system=change.source_system,
                source_event_id=change.source_event_id,
                object_type=change.object_type,
                record_id=change.record_id,
                kind=CrmEventKind.PROPERTY_CHANGED,
            )
            record = await state.known_properties(conn, event)
            if not record:
                return []
            opened = {
                r["proposal_id"]
                for r in await conn.fetch(
                    "SELECT proposal_id FROM detector_open_merges"
                    " WHERE object_type = $1 AND $2 = ANY(members)",
                    change.object_type.value,
                    change.record_id,
                )
            }
            found_now = [p for p in await self._merges(conn, event, record) if p.proposal_id not in opened]
            messages: list[tuple[str, str | None, Envelope[Any]]] = []
            emitted = await self._emit(conn, found_now, messages)
            await outbox.enqueue_many(conn, SERVICE, messages)
        LATE.labels(outcome="proposed" if emitted else "nothing_new").inc()
        for proposal in emitted:
            PROPOSALS.labels(kind=proposal.kind.value).inc()
        return emitted

    async def _detect(self, conn: DbConn, event: CrmEvent) -> list[Proposal]:
        kind = event.kind
        if kind in (CrmEventKind.RECORD_DELETED, CrmEventKind.RECORD_MERGED):
            await state.apply_record_event(conn, event)
            gone = [event.record_id] if kind is CrmEventKind.RECORD_DELETED else event.merged_record_ids
            self.indexes.remove(event.object_type, gone)
            await dedup.leave_clusters(conn, event.object_type, gone)
            return []
        if event.echo:
            return await self._learn_echo(conn, event)
        if kind in (CrmEventKind.RECORD_CREATED, CrmEventKind.PROPERTY_CHANGED):
            if event.redetect:  # `changegate replay`: the record as known now, examined afresh
                before, record = {}, await state.known_properties(conn, event)
                if not record:
                    return []  # gone since (deleted or merged away)
            else:
                before = (
                    await state.known_properties(conn, event) if kind is CrmEventKind.PROPERTY_CHANGED else {}
                )
                # What the CRM holds now as far as we know: a value older than one known stays out.
                record = await state.apply_record_event(conn, event)
            proposals: list[Proposal] = []
            # Duplicates can only appear when something identifying changed (a job title does not).
            if (
                kind is CrmEventKind.RECORD_CREATED
                or event.redetect
                or identity_changed(
                    event.object_type.value, before, record, self.settings.default_phone_region
                )
            ):
                proposals += await self._merges(conn, event, record)
            # The rotation row is locked until commit: only take it for an unowned record.
            unowned = is_empty(record.get(self.settings.owner.owner_field))
            index = await _round_robin_next(conn) if self.settings.owner.round_robin and unowned else None
            owned = owner.propose_owner(event, record, self.settings.owner, index)
            if owned.consumed_round_robin:
                await _round_robin_advance(conn)
            return proposals + self._kept(owned.proposal, "owner", owned.reason)
        if kind in _READING:
            return self._propose_from(event, await state.known_properties(conn, event))
        if kind is CrmEventKind.OWNER_DEACTIVATED:
            return await self._reassign_from(conn, event)
        return []

    def _propose_from(self, event: CrmEvent, known: dict[str, Any]) -> list[Proposal]:
        """What an event of a ``_READING`` kind proposes, given the record's known properties."""
        kind = event.kind
        if kind is CrmEventKind.ENRICHMENT_RESULT:
            proposal = propose_enrichment(event, known, self.settings.enrichment_default_confidence)
            return self._kept(proposal, "enrichment", "proposed" if proposal else "no_change")
        if kind in (CrmEventKind.LIFECYCLE_EVENT, CrmEventKind.SCORE):
            moved = lifecycle.propose_lifecycle(event, known, self.settings.lifecycle)
            return self._kept(moved.proposal, "lifecycle", moved.reason)
        verified = verification.propose_verification(event, known, self.settings.verification)
        return self._kept(verified.proposal, "verification", verified.reason)

    async def _learn_echo(self, conn: DbConn, event: CrmEvent) -> list[Proposal]:
        """The CRM reporting a change changegate applied itself: the record state and the blocking
        index learn it; nothing is proposed from it (it was decided already, and proposing from our
        own write would loop)."""
        if event.kind in (CrmEventKind.RECORD_CREATED, CrmEventKind.PROPERTY_CHANGED):
            record = await state.apply_record_event(conn, event)
            self.indexes.update(event.object_type, event.record_id, record)
        SKIPPED.labels(detector="all", reason="echo").inc()
        return []

    async def _merges(self, conn: DbConn, event: CrmEvent, record: dict[str, Any]) -> list[Proposal]:
        """The record's cluster, decided on its evidence against each candidate cluster as a whole
        (``matching/clusters.py``): a merge proposal for the cluster it is in, and for the one it
        left if it no longer fits there; open merges it alone held together are retired."""
        done = await dedup.cluster_record(
            conn, self.finder, self.indexes, event, record, self.model_info, self.settings.max_merge_proposals
        )
        if done.retire:
            because = (
                f"{event.record_id} changed and no longer matches its cluster (event {event.source_event_id})"
            )
            retired = await retire_merges_naming(
                conn, event.object_type, done.retire, f"left|{event.source_event_id}", because
            )
            SUPERSEDED.inc(len(retired))
            await enqueue_retirements(conn, self.names, self.signer, event.record_id, retired)
        return done.proposals

    async def _reassign_from(self, conn: DbConn, event: CrmEvent) -> list[Proposal]:
        """Every record the deactivated owner holds gets a new owner proposed."""
        proposals: list[Proposal] = []
        field = self.settings.owner.owner_field
        if not _PROPERTY_NAME.fullmatch(field):
            raise ValueError(f"owner_field {field!r} is not a property name")
        # The field name is inlined (checked above) so the expression index on it can serve.
        rows = await conn.fetch(
            "SELECT record_id, properties FROM detector_records WHERE object_type = $1 AND NOT deleted"
            f" AND properties->>'{field}' = $2 ORDER BY record_id",
            event.object_type.value,
            event.record_id,
        )
        for row in rows:
            index = await _round_robin_next(conn)
            result = owner.propose_for_deactivated_owner(
                event.record_id,
                event.object_type,
                row["record_id"],
                row["properties"],
                self.settings.owner,
                source_system=event.source_system,
                source_event_id=event.source_event_id,
                next_index=index,
            )
            if result.consumed_round_robin:
                await _round_robin_advance(conn)
            proposals += self._kept(result.proposal, "owner", result.reason)
        return proposals

    @staticmethod
    def _kept(proposal: Proposal | None, detector: str, reason: str) -> list[Proposal]:
        if proposal is None:
            SKIPPED.labels(detector=detector, reason=str(reason)).inc()
            return []
        return [proposal]


# Kinds whose detection only reads the record's known properties and proposes field updates from
# them: no state written, no merge, nothing that depends on open or decided proposals.
_READING = frozenset(
    {
        CrmEventKind.ENRICHMENT_RESULT,
        CrmEventKind.LIFECYCLE_EVENT,
        CrmEventKind.SCORE,
        CrmEventKind.VERIFICATION_RESULT,
    }
)


def _reads_only(event: CrmEvent) -> bool:
    return event.kind in _READING and not event.echo


async def _round_robin_next(conn: DbConn) -> int:
    """The rotation position, locked until the transaction ends (one assignment at a time)."""
    await conn.execute("INSERT INTO detector_round_robin (name) VALUES ('owner') ON CONFLICT DO NOTHING")
    value: int = await conn.fetchval("SELECT next FROM detector_round_robin WHERE name = 'owner' FOR UPDATE")
    return value


async def _round_robin_advance(conn: DbConn) -> None:
    await conn.execute("UPDATE detector_round_robin SET next = next + 1 WHERE name = 'owner'")
