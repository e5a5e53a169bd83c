"""The detector's changelog: how every replica's in-process index holds what the others wrote.

Whenever a detector replica changes what it knows of a record (PostgreSQL ``detector_records``), it
sends a ``RecordChange`` through its outbox, in the transaction of the change, to a topic of one
partition. Every replica reads that topic in full, in order, with no consumer group (``RecordFeed``):
for each change it reads the record again from the database (a message carries no properties, so
a forged one can only make a replica read a record again) and re-indexes it.

A pair of records written at the same time by two replicas is still compared by neither, each
having searched before the other's change reached it. The changelog says when that happened: a
change carries ``seen``, the offset up to which its writer's index held other replicas' changes
when it searched. For a searched change Y at offset o, a record X whose last searched change lies
in [Y.seen, o) and came from another writer was not seen by Y's search — and X's search, earlier,
did not see Y either. Every replica, on reading Y, compares Y with those records (a *late check*);
if one matches and is not in Y's cluster already, the search is run again for Y — claimed in the
database, so once for all replicas, and under Y's own source event, so a cluster found before is
the same proposal, not a second one. What one replica finds this way is what a single replica would
have found, reading the records one after the other.

At start a replica notes the end of the changelog, rebuilds its index from the database (which
holds everything before that end), then reads the changelog from its beginning: the old part for
what it says of who searched when (no database reads), the rest as above. Late checks of the old
part are run again too (claims and clusters make them no-ops when done), so one that a crash
interrupted is not lost."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType, RecordChange
from changegate.core.contracts.envelope import Envelope, UnknownEventError, make_envelope
from changegate.core.kafka import MessageProcessor, Subscription, is_transient, start_with_retry
from changegate.core.logging import get_logger
from changegate.core.serde import decode
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames
from changegate.detector import dedup
from prometheus_client import Counter, Gauge
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

log = get_logger(__name__)
FEED_GROUP = "changegate-detector-records"  # names the dead letters; no offsets are committed
SERVICE = "detector"

APPLIED = Counter(
    "changegate_detector_changelog_applied_total", "Changelog records read by this replica", ["part"]
)
LATE = Counter(
    "changegate_detector_late_checks_total",
    "Records searched again because another replica wrote a match at the same time, by outcome",
    ["outcome"],
)
POSITION = Gauge("changegate_detector_changelog_position", "Next changelog offset this replica reads")

# (object type, record id)
RecordKey = tuple[str, str]
Message = tuple[str, str | None, Envelope[Any]]


@dataclass(frozen=True)
class Late:
    """A searched change, and the records written by other replicas that its search could not see."""

    change: RecordChange
    event_id: uuid.UUID
    unseen: set[str]


@dataclass(frozen=True)
class Changed:
    """A record whose state the detector changed, and by what."""

    object_type: ObjectType
    record_id: str
    searched: bool  # its duplicates were searched with this change
    source_system: str
    source_event_id: str


def changed_by(event: CrmEvent) -> list[Changed]:
    """What a (newly processed) CRM event changed in the detector's state: created and changed
    records are searched for duplicates (an echo is not), deleted and merged-away ones leave."""

    def one(record_id: str, searched: bool) -> Changed:
        return Changed(event.object_type, record_id, searched, event.source_system, event.source_event_id)

    if event.kind in (CrmEventKind.RECORD_CREATED, CrmEventKind.PROPERTY_CHANGED):
        return [one(event.record_id, not event.echo)]
    if event.kind is CrmEventKind.RECORD_DELETED:
        return [one(event.record_id, False)]
    if event.kind is CrmEventKind.RECORD_MERGED:
        return [one(gone, False) for gone in event.merged_record_ids]
    return []


def change_messages(names: TopicNames, changed: list[Changed], writer: str, seen: int) -> list[Message]:
    """The changelog messages of records ``writer`` changed in a transaction (send them through the
    detector's outbox, in it). A writer that does not search (an import) says ``seen`` 0."""
    topic = names(Topic.RECORD_CHANGES)
    out: list[Message] = []
    for c in changed:
        change = RecordChange(
            object_type=c.object_type,
            record_id=c.record_id,
            writer=writer,
            seen=seen,
            searched=c.searched,
            source_system=c.source_system,
            source_event_id=c.source_event_id,
        )
        out.append((topic, c.record_id, make_envelope(change, service=SERVICE)))
    return out


class RecordFeed:
    """Reads the changelog in full and keeps the index as the database holds the records."""

    def __init__(
        self,
        settings: CommonSettings,
        pool: asyncpg.Pool,
        indexes: dedup.Indexes,
        producer: AIOKafkaProducer,
        stop: asyncio.Event,
        window: int = 200_000,
    ) -> None:
        self.pool, self.indexes, self.stop = pool, indexes, stop
        self.names = TopicNames(settings.topic_prefix)
        self.tp = TopicPartition(self.names(Topic.RECORD_CHANGES), 0)
        self.writer = uuid.uuid4().hex[:16]  # this replica, this run
        self.position = 0  # the next offset to read
        self.start_end: int | None = None  # the changelog's end when this replica started
        self.caught_up = asyncio.Event()
        self.on_late: Callable[[Late], Awaitable[object]] | None = None
        # The recent searched changes: (offset, object type, record id, writer), and each record's last.
        self._window: deque[tuple[int, str, str, str]] = deque()
        self._window_size = window
        self._last: dict[RecordKey, tuple[int, str]] = {}
        self._pending: dict[TopicPartition, list[Any]] = {}
        self.processor = MessageProcessor(
            settings,
            FEED_GROUP,
            [Subscription.batch(Topic.RECORD_CHANGES, frozenset({"record_change"}), _nothing)],
            producer,
            stop,
        )
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            **settings.kafka_security(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            max_poll_records=settings.kafka_max_batch,
        )

    @property
    def seen(self) -> int:
        """What a search of this replica sees now: the changelog up to here (what came before its
        start is in its index through the database)."""
        return max(self.position, self.start_end or 0)

    def messages(self, changed: list[Changed], seen: int | None = None) -> list[Message]:
        """The changelog messages of records changed in a transaction (send them through the outbox,
        in it); ``seen``: what the search of those records saw (default: now)."""
        return change_messages(self.names, changed, self.writer, self.seen if seen is None else seen)

    async def start(self, deadline_seconds: float = 60) -> int:
        """Take the changelog's only partition from its beginning and learn its end (the high
        watermark of a fetch: the broker's ListOffsets answer for the end may be wrong). Call before
        the index is rebuilt from the database."""
        await start_with_retry(self.consumer)
        self.consumer.assign([self.tp])
        await self.consumer.seek_to_beginning(self.tp)
        deadline = time.monotonic() + deadline_seconds
        while (end := self.consumer.highwater(self.tp)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer from the broker about {self.tp.topic}")
            fetched = await self.consumer.getmany(self.tp, timeout_ms=500)
            for records in fetched.values():
                self._pending.setdefault(self.tp, []).extend(records)
        self.start_end = int(end)
        if not end:
            self.caught_up.set()
        log.info("changelog found", end=self.start_end, writer=self.writer)
        return self.start_end

    async def run(self) -> None:
        try:
            if self._pending:
                pending, self._pending = self._pending, {}
                await self.apply(pending.get(self.tp, []))
            while not self.stop.is_set():
                try:
                    fetched = await self.consumer.getmany(self.tp, timeout_ms=200)
                except KafkaError as exc:
                    log.warning("changelog fetch failed, retrying", error=repr(exc))
                    await asyncio.sleep(1)
                    continue
                await self.apply(fetched.get(self.tp, []))
        finally:
            await self.consumer.stop()

    async def _patiently(self, call: Callable[[], Awaitable[object]]) -> None:
        """Database or broker trouble is waited out (the changelog is not read on meanwhile)."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential_jitter(multiplier=0.1, max=5, jitter=0.5),
            reraise=True,
        ):
            with attempt:
                await call()

    async def apply(self, records: list[Any]) -> None:
        """Changes in offset order: the live part re-indexed from the database, every searched one
        noted, late checks run."""
        changes: list[tuple[int, uuid.UUID, RecordChange]] = []
        for record in records:
            try:
                envelope = decode(record.value, {"record_change"}, self.processor.limits)
            except UnknownEventError as exc:
                await self.processor.dead_letter(record, exc.reason, str(exc))
                continue
            changes.append((record.offset, envelope.event_id, envelope.payload))
        live = [c for o, _, c in changes if self.start_end is None or o >= self.start_end]
        if live:
            await self._patiently(lambda: self._reindex(live))
        for offset, event_id, change in changes:
            part = "live" if self.start_end is None or offset >= self.start_end else "replay"
            APPLIED.labels(part=part).inc()
            if change.searched:
                late = self._unseen(offset, change)
                self._note(offset, change)
                if late and self.on_late is not None:
                    await self._late_check(Late(change, event_id, late))
        if records:
            self.position = records[-1].offset + 1
            POSITION.set(self.position)
        if self.start_end is not None and self.position >= self.start_end:
            self.caught_up.set()

    async def _late_check(self, late: Late) -> None:
        assert self.on_late is not None
        on_late = self.on_late
        try:
            await self._patiently(lambda: on_late(late))
        except Exception as exc:  # a check that cannot run must not stop the changelog
            LATE.labels(outcome="failed").inc()
            log.error("late check failed", record_id=late.change.record_id, exc_info=exc)

    async def _reindex(self, changes: list[RecordChange]) -> None:
        keys = list({(c.object_type.value, c.record_id) for c in changes})
        rows = await self.pool.fetch(
            "SELECT r.object_type, r.record_id, r.properties FROM detector_records r"
            " JOIN unnest($1::text[], $2::text[]) AS k(object_type, record_id)"
            " ON r.object_type = k.object_type AND r.record_id = k.record_id WHERE NOT r.deleted",
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        found = {(r["object_type"], r["record_id"]): r["properties"] for r in rows}
        for object_type, record_id in keys:
            props = found.get((object_type, record_id))
            if props is None:
                self.indexes.remove(ObjectType(object_type), [record_id])
            else:
                self.indexes.update(ObjectType(object_type), record_id, props)

    def _unseen(self, offset: int, change: RecordChange) -> set[str]:
        """Records another writer searched in [change.seen, offset): the change's search did not see
        them, nor theirs it."""
        unseen: set[str] = set()
        object_type = change.object_type.value
        for at, kind, record_id, writer in reversed(self._window):
            if at < change.seen:
                break
            if (
                kind == object_type
                and writer != change.writer
                and self._last.get((kind, record_id)) == (at, writer)
            ):
                unseen.add(record_id)
        if self._window and change.seen < self._window[0][0] and len(self._window) >= self._window_size:
            log.warning("late check beyond the changelog window kept in memory", seen=change.seen)
        unseen.discard(change.record_id)
        return unseen

    def _note(self, offset: int, change: RecordChange) -> None:
        key = (change.object_type.value, change.record_id)
        self._window.append((offset, key[0], key[1], change.writer))
        self._last[key] = (offset, change.writer)
        while len(self._window) > self._window_size:
            at, kind, record_id, writer = self._window.popleft()
            if self._last.get((kind, record_id)) == (at, writer):
                del self._last[(kind, record_id)]


async def _nothing(envelopes: list[Envelope[Any]]) -> None:
    """The feed decodes and dead-letters through a processor, but applies changes itself."""
