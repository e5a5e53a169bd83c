"""The demo feed (`dev up --demo`, `changegate demo feed`): the demo's steps (``demo.py``) played
against a CRM as a CRM would see them.

- A step's records are made in the CRM first and reach ingest as the webhooks that CRM sends: the
  HubSpot simulator sends them itself (signed, batched, as HubSpot does); the sandbox CRM has no
  webhooks, so the feed sends HubSpot's for it. Then the step's other events (Clay rows, forms,
  scores, verifier results) go to ingest as their senders post them.
- What the default policy should apply by itself is looked for in the CRM: a line says it applied
  once the CRM holds it, or that it did not within ``confirm_seconds``.
- The conflict step: once its proposal waits for review, a person changes the same field in the CRM
  (which reports it), then the feed approves the proposal as the dev reviewer and shows how it
  ended: a conflict, nothing overwritten, a refreshed proposal back in review.

The CRM's own ids are used throughout: the simulator assigns them as HubSpot does, so a step's ids
(``demo.py`` makes its own) are mapped to them before anything is sent or shown."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
from changegate.cli.demo import DEMO_OWNERS, DemoStep, steps
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.base import PropertyValue, utcnow
from changegate.core.settings import CommonSettings

if TYPE_CHECKING:
    from changegate.cli.webhooks import IngestTarget

Say = Callable[[str], None]
Report = Callable[[CrmEvent], Awaitable[None]]
HUBSPOT_SIM = "hubspot-sim"


@dataclass(frozen=True)
class CrmTarget:
    """The CRM the stack's executor writes to: ``sandbox``, or ``hubspot-sim`` at ``url``."""

    kind: str = "sandbox"
    url: str | None = None


@dataclass(frozen=True)
class ReviewTarget:
    """The review API of the running stack and a reviewer's token (the dev stack's)."""

    url: str
    token: str


class DemoCrm(ABC):
    """Where the demo's records live, and how changes to them reach ingest."""

    label: str

    @abstractmethod
    async def prepare(self) -> None:
        """The owners the demo's records are assigned to exist in the CRM."""

    @abstractmethod
    async def create(self, demo_id: str, properties: dict[str, PropertyValue]) -> str:
        """Make the record (reported as a creation); its id in the CRM."""

    @abstractmethod
    async def change(self, record_id: str, properties: dict[str, PropertyValue]) -> None:
        """A person changes the record in the CRM (reported as property changes)."""

    @abstractmethod
    async def held(self, record_id: str) -> dict[str, Any]:
        """The record's properties in the CRM now (following merges); {} when gone."""

    @abstractmethod
    async def settle(self) -> None:
        """Every change so far has reached ingest."""


class SandboxDemoCrm(DemoCrm):
    """The sandbox CRM (a table in the executor's PostgreSQL). It sends no webhooks, so the feed
    reports each change as HubSpot would (``report``)."""

    label = "the sandbox CRM"

    def __init__(self, pool: asyncpg.Pool, report: Report) -> None:
        self.pool, self.report = pool, report

    async def prepare(self) -> None:
        from changegate.executor.crm import sandbox

        for owner in DEMO_OWNERS:
            await sandbox.upsert_owner(self.pool, owner)

    async def create(self, demo_id: str, properties: dict[str, PropertyValue]) -> str:
        await self._write(demo_id, properties, CrmEventKind.RECORD_CREATED)
        return demo_id

    async def change(self, record_id: str, properties: dict[str, PropertyValue]) -> None:
        await self._write(record_id, properties, CrmEventKind.PROPERTY_CHANGED)

    async def _write(self, record_id: str, properties: dict[str, PropertyValue], kind: CrmEventKind) -> None:
        from changegate.executor.crm import sandbox

        await sandbox.upsert_record(self.pool, ObjectType.CONTACT, record_id, properties)
        await self.report(
            CrmEvent(
                source_system="hubspot",
                source_event_id=f"sandbox-{record_id}-{time.time_ns()}",
                object_type=ObjectType.CONTACT,
                record_id=record_id,
                kind=kind,
                properties=properties,
                occurred_at=utcnow(),
            )
        )

    async def held(self, record_id: str) -> dict[str, Any]:
        from changegate.executor.crm import sandbox

        return await sandbox.get_record(self.pool, ObjectType.CONTACT, record_id) or {}

    async def settle(self) -> None:
        return None  # each report was acknowledged by ingest before ``create`` returned


class SimulatorDemoCrm(DemoCrm):
    """The HubSpot simulator: records made and changed through HubSpot's API, as a person in
    HubSpot's UI (so their webhooks are nobody's echo); the simulator reports them to ingest."""

    label = "the HubSpot simulator"

    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        from changegate.hubspot_sim import UI_TOKEN

        self.url, self.client = url.rstrip("/"), client
        self.auth = {"Authorization": f"Bearer {UI_TOKEN}", "Accept": "application/json"}

    async def prepare(self) -> None:
        missing = []
        for owner in DEMO_OWNERS:
            found = await self.client.get(f"{self.url}/crm/v3/owners/{owner}", headers=self.auth)
            if found.status_code == 404:
                missing.append({"id": owner, "email": f"owner-{owner}@demo.example"})
        if missing:
            (await self.client.post(f"{self.url}/_sim/owners", json={"owners": missing})).raise_for_status()

    async def create(self, demo_id: str, properties: dict[str, PropertyValue]) -> str:
        body = {"properties": _strings(properties), "associations": []}
        response = await self.client.post(f"{self.url}/crm/v3/objects/contacts", json=body, headers=self.auth)
        _check(response)
        return str(response.json()["id"])

    async def change(self, record_id: str, properties: dict[str, PropertyValue]) -> None:
        response = await self.client.patch(
            f"{self.url}/crm/v3/objects/contacts/{record_id}",
            json={"properties": _strings(properties, keep_empty=True)},
            headers=self.auth,
        )
        _check(response)

    async def held(self, record_id: str) -> dict[str, Any]:
        response = await self.client.get(f"{self.url}/_sim/records/contacts/{record_id}")
        if response.status_code == 404:
            return {}
        props: dict[str, Any] = response.json()["properties"]
        return props

    async def settle(self) -> None:
        response = await self.client.post(
            f"{self.url}/_sim/webhooks/flush", params={"timeout": 60}, timeout=70
        )
        _check(response)


def _strings(properties: dict[str, PropertyValue], keep_empty: bool = False) -> dict[str, str]:
    """HubSpot takes every property value as a string; an empty one is left out of a creation."""
    out = {}
    for name, value in properties.items():
        text = "" if value is None else str(value)
        if text or keep_empty:
            out[name] = text
    return out


def _check(response: httpx.Response) -> None:
    if response.status_code >= 300:
        raise RuntimeError(f"the CRM answered {response.status_code}: {response.text[:500]}")


def _mapped(text: str, ids: dict[str, str]) -> str:
    # The demo's ids are long numbers of their own (never part of one another): plain replacement.
    for demo_id, crm_id in ids.items():
        if demo_id != crm_id:
            text = text.replace(demo_id, crm_id)
    return text


@dataclass
class Expected:
    deadline: float
    scenario: str
    record_id: str
    values: dict[str, PropertyValue]


class Feed:
    """Plays steps against ``crm``; other events go through ``send`` (signed webhooks, or the topic)."""

    def __init__(
        self,
        crm: DemoCrm,
        send: Report,
        client: httpx.AsyncClient,
        review: ReviewTarget | None,
        confirm_seconds: float,
    ) -> None:
        self.crm, self.send, self.client, self.review = crm, send, client, review
        self.confirm_seconds = confirm_seconds
        self.expected: list[Expected] = []
        self.ids: dict[str, str] = {}  # every step's ids -> the CRM's

    async def play(self, step: DemoStep, say: Say) -> None:
        ids = {demo_id: await self.crm.create(demo_id, props) for demo_id, props in step.records.items()}
        self.ids.update(ids)
        await self.crm.settle()  # the CRM's reports first: the other events are about its records
        for event in step.events:
            if event.source_system == "hubspot" and event.kind is CrmEventKind.RECORD_CREATED:
                continue  # the CRM reported it
            await self.send(event.model_copy(update={"record_id": ids.get(event.record_id, event.record_id)}))
        say(f"  [cyan]{step.scenario:>12}[/] {_mapped(step.shows, ids)}")
        deadline = time.monotonic() + self.confirm_seconds
        self.expected += [Expected(deadline, step.scenario, ids[r], v) for r, v in step.applies.items()]
        for demo_id, values in step.crm_change.items():
            await self.conflict(ids[demo_id], values, say)

    async def confirm(self, say: Say) -> None:
        """Say, for each expected write, that the CRM holds it, or that it did not come in time."""
        waiting = []
        for item in self.expected:
            held = await self.crm.held(item.record_id)
            shown = ", ".join(f"{k} = {v}" for k, v in item.values.items())
            if all(held.get(k) == v for k, v in item.values.items()):
                seen = f"(seen in {self.crm.label})"
                say(f"  [green]{item.scenario:>12} applied[/]: {item.record_id} {shown} {seen}")
            elif time.monotonic() >= item.deadline:
                late = f"within {self.confirm_seconds:.0f} s"
                say(f"  [red]{item.scenario:>12} NOT applied[/] {late}: {item.record_id} {shown}")
            else:
                waiting.append(item)
        self.expected[:] = waiting

    async def conflict(self, record_id: str, values: dict[str, PropertyValue], say: Say) -> None:
        """The CRM changes after the proposal; the approval that follows must end as a conflict."""
        if self.review is None:
            say(
                f"  [yellow]{'conflict':>12}[/] no review API token here: approve {record_id}'s proposal"
                f" after setting {values} in the CRM yourself, and it ends as a conflict"
            )
            return
        headers = {"Authorization": f"Bearer {self.review.token}"}
        item = await self._until(lambda: self._pending(record_id, headers), "the proposal to wait for review")
        if item is None:
            within = f"within {self.confirm_seconds:.0f} s"
            say(f"  [red]{'conflict':>12} NOT shown[/]: no proposal for {record_id} waited {within}")
            return
        await self.crm.change(record_id, values)
        await self.crm.settle()
        shown = ", ".join(f"{k} = {v!r}" for k, v in values.items())
        where = f"on {record_id} in {self.crm.label}"
        say(f"  [cyan]{'conflict':>12}[/] a rep set {shown} {where}; approving the proposal now")
        proposal_id = item["proposal_id"]
        approved = await self.client.post(
            f"{self.review.url}/v1/proposals/{proposal_id}/approve",
            json={"comment": "demo: approved after the CRM changed"},
            headers=headers,
        )
        if approved.status_code != 200:
            refused = f"{approved.status_code} {approved.text[:200]}"
            say(f"  [red]{'conflict':>12} NOT shown[/]: the approval was refused ({refused})")
            return
        executed = await self._until(
            lambda: self._executed(proposal_id, headers), "the approved proposal to be executed"
        )
        held = await self.crm.held(record_id)
        kept = all(held.get(k) == v for k, v in values.items())
        status = (executed or {}).get("status")
        if status == "conflict" and kept:
            say(
                f"  [green]{'conflict':>12}[/]: the approved change was NOT written over the newer value"
                f" ({shown} stays in {self.crm.label}); a refreshed proposal with it as the previous"
                " value waits in queue 'conflicts'"
            )
        else:
            say(f"  [red]{'conflict':>12} NOT shown[/]: the execution ended {status!r}; the CRM holds {held}")

    async def _pending(self, record_id: str, headers: dict[str, str]) -> dict[str, Any] | None:
        assert self.review is not None
        response = await self.client.get(
            f"{self.review.url}/v1/proposals",
            params={"record_id": record_id, "status": "pending", "kind": "field_update"},
            headers=headers,
        )
        items: list[dict[str, Any]] = response.json().get("items", []) if response.status_code == 200 else []
        return items[0] if items else None

    async def _executed(self, proposal_id: str, headers: dict[str, str]) -> dict[str, Any] | None:
        assert self.review is not None
        response = await self.client.get(f"{self.review.url}/v1/proposals/{proposal_id}", headers=headers)
        execution: dict[str, Any] | None = (
            response.json().get("execution") if response.status_code == 200 else None
        )
        return execution

    async def _until(
        self, probe: Callable[[], Awaitable[dict[str, Any] | None]], what: str
    ) -> dict[str, Any] | None:
        deadline = time.monotonic() + self.confirm_seconds
        while time.monotonic() < deadline:
            found = await probe()
            if found is not None:
                return found
            await asyncio.sleep(0.25)
        return None


async def run_feed(
    feed: Feed,
    count: int | None,
    interval: float,
    seed: int,
    run: str | None,
    say: Say,
    advance: Callable[[], None] = lambda: None,
) -> int:
    """``count`` steps (None: until stopped); a finite feed waits for its expected writes."""
    await feed.crm.prepare()
    sent = 0
    for step in steps(seed, run):
        if count is not None and sent >= count:
            break
        await feed.play(step, say)
        sent += 1
        advance()
        await feed.confirm(say)
        if interval:
            await asyncio.sleep(interval)
    while feed.expected:
        await asyncio.sleep(0.5)
        await feed.confirm(say)
    return sent


async def demo_stream(
    settings: CommonSettings,
    count: int | None,
    interval: float,
    say: Say,
    *,
    seed: int = 7,
    run: str | None = None,
    ingest: IngestTarget | None = None,
    crm: CrmTarget = CrmTarget(),
    review: ReviewTarget | None = None,
    confirm_seconds: float = 30.0,
    advance: Callable[[], None] = lambda: None,
    ids: dict[str, str] | None = None,
) -> int:
    """Feed ``count`` steps (None: until stopped) to the stack ``settings`` point at: events as
    signed webhooks to ``ingest`` when given, else straight onto crm.events (sandbox only).
    ``ids``, when given, learns each step's record ids as the CRM's."""
    from changegate.cli.webhooks import WebhookSender
    from changegate.core.contracts.envelope import make_envelope
    from changegate.core.kafka import make_producer, publish, start_with_retry
    from changegate.core.topics import Topic, TopicNames

    if crm.kind == HUBSPOT_SIM and (ingest is None or crm.url is None):
        raise ValueError("the HubSpot simulator reports to the stack's ingest service: give both")
    topic = TopicNames(settings.topic_prefix)(Topic.CRM_EVENTS)
    producer = make_producer(settings, "demo-feed")
    await start_with_retry(producer)
    client = httpx.AsyncClient(timeout=30)
    pool: asyncpg.Pool | None = None
    webhooks = WebhookSender(ingest, client) if ingest is not None else None

    async def send(event: CrmEvent) -> None:
        if webhooks is not None:
            await webhooks.send(event)
        else:
            await publish(producer, topic, event.record_id, make_envelope(event, service="demo-feed"))

    try:
        target: DemoCrm
        if crm.kind == HUBSPOT_SIM:
            assert crm.url is not None
            target = SimulatorDemoCrm(crm.url, client)
        else:
            from changegate.core.db import create_pool, migrate, migrate_core

            pool = await create_pool(settings.database_url, max_size=2)
            await migrate_core(pool)
            await migrate(pool, "executor", "changegate.executor.migrations")
            target = SandboxDemoCrm(pool, send)
        feed = Feed(target, send, client, review, confirm_seconds)
        if ids is not None:
            feed.ids = ids
        return await run_feed(feed, count, interval, seed, run, say, advance)
    finally:
        await client.aclose()
        await producer.stop()
        if pool is not None:
            await pool.close()
