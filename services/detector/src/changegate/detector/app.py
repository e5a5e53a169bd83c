"""Detector entrypoint: crm.events in, proposals out through the outbox; a second consumer group
follows proposals to the end of their lifecycle (decisions, review requests, executions).

Both read through the shared consumer loop: a polled batch per transaction, offsets committed only
once its effects are durable; every effect is idempotent in PostgreSQL, so what a crash makes the
broker redeliver changes nothing twice."""

from __future__ import annotations

from changegate.core import field_risk
from changegate.core.kafka import Subscription
from changegate.core.logging import get_logger
from changegate.core.service import Consumer, Context, Parts, Service
from changegate.core.topics import Topic
from changegate.detector.changelog import RecordFeed
from changegate.detector.handler import SERVICE, Detector
from changegate.detector.learning import Learner
from changegate.detector.open_proposals import GROUP as LIFECYCLE_GROUP
from changegate.detector.open_proposals import ProposalLifecycle
from changegate.detector.settings import DetectorSettings

log = get_logger(__name__)
GROUP = "changegate-detector"


def _known_fields(settings: DetectorSettings) -> None:
    """Every field the detector proposes under a kind is one the field-risk table knows for it."""
    unknown = settings.field_risk_refusals(field_risk.table())
    if unknown:
        raise SystemExit("detector: " + "; ".join(unknown))


async def setup(ctx: Context[DetectorSettings]) -> Parts:
    signer = ctx.signer()
    detector = Detector(ctx.pool, ctx.settings, signer)
    # Every replica reads the changelog of record state in full (see changelog.py): its end first,
    # then the index from the database, which holds everything before that end.
    feed = RecordFeed(ctx.settings, ctx.pool, detector.indexes, ctx.producer, ctx.runtime.stop)
    await feed.start()
    await detector.load_index()
    detector.feed, feed.on_late = feed, detector.recheck
    ctx.runtime.checks["changelog"] = feed.caught_up.is_set
    lifecycle = ProposalLifecycle(ctx.pool, ctx.names, signer, ctx.verifier(), detector.indexes, feed)
    workers = [feed.run]
    if ctx.settings.reliability_learn_seconds > 0:
        learner = Learner(
            ctx.pool,
            detector.reliability,
            detector.use_reliability,
            ctx.settings.reliability_learn_seconds,
            ctx.runtime.stop,
        )
        await learner.refresh()  # before the first event: what reviewers decided until now
        workers.append(learner.run)
    return Parts(
        consumers=[
            Consumer(
                GROUP, [Subscription.batch(Topic.CRM_EVENTS, frozenset({"crm_event"}), detector.handle_batch)]
            ),
            # Decisions, review requests and merges end and open proposals; a consumer group of its own.
            Consumer(
                LIFECYCLE_GROUP,
                [
                    Subscription.batch(Topic.DECISIONS, frozenset({"decision"}), lifecycle.on_decisions),
                    Subscription.batch(
                        Topic.PROPOSALS_PENDING, frozenset({"review_request"}), lifecycle.on_review_requests
                    ),
                    Subscription.batch(Topic.EXECUTIONS, frozenset({"execution"}), lifecycle.on_executions),
                ],
                check="lifecycle_consumer",
            ),
        ],
        workers=workers,
    )


DETECTOR = Service(
    SERVICE,
    DetectorSettings,
    setup,
    migrations="changegate.detector.migrations",
    outbox=True,
    check=_known_fields,
)
main = DETECTOR.main
