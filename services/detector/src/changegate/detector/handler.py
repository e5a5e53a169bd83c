"""Per-event detection: fold the event into record state and emit proposals, in one transaction."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
from changegate.core import outbox
from changegate.core.contracts import CrmEvent, CrmEventKind, Proposal
from changegate.core.contracts.envelope import Envelope, make_envelope
from changegate.core.db import DbConn, claim_event
from changegate.core.logging import get_logger
from changegate.core.topics import Topic, TopicNames
from changegate.detector import state
from changegate.detector.enrichment import propose_enrichment
from changegate.detector.settings import DetectorSettings
from prometheus_client import Counter, Histogram

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

RECORD_KINDS = frozenset(
    {
        CrmEventKind.RECORD_CREATED,
        CrmEventKind.PROPERTY_CHANGED,
        CrmEventKind.RECORD_DELETED,
        CrmEventKind.RECORD_MERGED,
    }
)


class Detector:
    def __init__(self, pool: asyncpg.Pool, settings: DetectorSettings) -> None:
        self.pool = pool
        self.settings = settings
        self.names = TopicNames(settings.topic_prefix)

    async def handle(self, envelope: Envelope[Any]) -> None:
        event: CrmEvent = envelope.payload
        started = time.perf_counter()
        async with self.pool.acquire() as conn, conn.transaction():
            if not await claim_event(conn, SERVICE, envelope.event_id):
                EVENTS.labels(kind=event.kind.value, outcome="duplicate").inc()
                return
            proposals = await self._detect(conn, event)
            for proposal in proposals:
                out = make_envelope(
                    proposal,
                    service=SERVICE,
                    correlation_id=proposal.proposal_id,
                    dedup_key=str(proposal.proposal_id),
                )
                await outbox.enqueue(conn, SERVICE, self.names(Topic.PROPOSALS), proposal.record_id, out)
        DETECTION_SECONDS.observe(time.perf_counter() - started)
        EVENTS.labels(kind=event.kind.value, outcome="proposed" if proposals else "no_change").inc()
        for proposal in proposals:
            PROPOSALS.labels(kind=proposal.kind.value).inc()
            log.info(
                "proposed",
                correlation_id=str(proposal.proposal_id),
                kind=proposal.kind.value,
                record_id=proposal.record_id,
                confidence=proposal.confidence,
            )

    async def _detect(self, conn: DbConn, event: CrmEvent) -> list[Proposal]:
        if event.kind in RECORD_KINDS:
            await state.apply_record_event(conn, event)
            return []
        if event.kind is CrmEventKind.ENRICHMENT_RESULT:
            known = await state.known_properties(conn, event)
            proposal = propose_enrichment(event, known, self.settings.enrichment_default_confidence)
            return [proposal] if proposal else []
        return []  # other kinds: their detectors come with the detector issue
