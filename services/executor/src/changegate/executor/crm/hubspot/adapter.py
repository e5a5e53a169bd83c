"""The HubSpot adapter (CRM v3: contacts, companies, owners).

HubSpot has no conditional write, so compare-and-set is: batch-read the fields, compare them with
the proposal's previous values (``values.same``: null is "", numbers by value, email without case),
write with a batch update, then read again to confirm. The window that remains — another writer
changing a field between our read and our write — is documented in the README: the re-read reports
a value changed right after ours, but cannot undo a write that landed on a just-changed value.

Batches take at most 100 inputs; a 207 answer's errors are mapped back to the inputs they name.
A merge creates a new record id that both old ids resolve to; the adapter reports it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import httpx
from changegate.core.contracts import FieldWrite, ObjectType
from changegate.core.contracts.base import PropertyValue
from changegate.executor.crm.hubspot.client import HubSpotClient
from changegate.executor.crm.port import (
    BatchWriter,
    BeforeWriteMany,
    Capabilities,
    CrmRefusedError,
    MergeResult,
    OwnerStatus,
    RecordNotFoundError,
    RecordPage,
    RecordState,
    SnapshotRecord,
    WriteItem,
    WriteOutcome,
    WriteResult,
    WriteStatus,
)
from changegate.executor.crm.values import same, to_crm_string
from changegate.executor.settings import ExecutorSettings

T = TypeVar("T")
TARGET = "hubspot"
BATCH = 100
OBJECTS = {ObjectType.CONTACT: "contacts", ObjectType.COMPANY: "companies"}
# What HubSpot lists with every record, asked for or not (the import keeps the creation date).
DEFAULT_LISTED = ("createdate",)


class HubSpotCrm(BatchWriter):
    target = TARGET
    capabilities = Capabilities(
        conditional_write=False, max_batch=BATCH, max_merge_records=2, merge_gives_new_id=True, owners=True
    )

    def __init__(self, client: HubSpotClient) -> None:
        self.client = client

    @classmethod
    def from_settings(
        cls, settings: ExecutorSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> HubSpotCrm:
        assert settings.hubspot_token is not None
        share = settings.hubspot_rate_share  # unset: the executor sets its share of partitions
        return cls(
            HubSpotClient(
                settings.hubspot_base_url,
                settings.hubspot_token.get_secret_value(),
                requests_per_window=settings.hubspot_requests_per_window,
                window_seconds=settings.hubspot_window_seconds,
                timeout=settings.hubspot_timeout_seconds,
                attempts=settings.hubspot_attempts,
                transport=transport,
                share=None if share is None else (lambda: share),
            )
        )

    async def close(self) -> None:
        await self.client.close()

    # -- reads ---------------------------------------------------------------------------------
    async def read(
        self, object_type: ObjectType, record_ids: Sequence[str], fields: Sequence[str]
    ) -> dict[str, RecordState]:
        """Batch reads of 100 ids, sent together (the client's limiter spaces them)."""
        objects = OBJECTS[object_type]
        chunks = [list(record_ids[at : at + BATCH]) for at in range(0, len(record_ids), BATCH)]
        found: dict[str, RecordState] = {}
        for part in await _together(self._read_chunk(objects, chunk, fields) for chunk in chunks):
            found.update(part)
        return {rid: found[rid] for rid in record_ids if rid in found}

    async def _read_chunk(
        self, objects: str, chunk: list[str], fields: Sequence[str]
    ) -> dict[str, RecordState]:
        response = await self.client.request(
            "batch_read",
            "POST",
            f"/crm/v3/objects/{objects}/batch/read",
            json={
                "inputs": [{"id": rid} for rid in chunk],
                "properties": list(fields),
                "propertiesWithHistory": [],
            },
        )
        body = _json(response, "batch read", ok=(200, 207))
        found = {}
        for result in body.get("results", []):
            rid = str(result["id"])
            found[rid] = RecordState(rid, _properties(result, fields))
        # An id merged away answers under its survivor's id: ask for it alone to learn where.
        for rid in chunk:
            if rid not in found and not _named_in_errors(body, rid, "OBJECT_NOT_FOUND"):
                state = await self._read_one(objects, rid, fields)
                if state is not None:
                    found[rid] = state
        return found

    async def _read_one(self, objects: str, record_id: str, fields: Sequence[str]) -> RecordState | None:
        response = await self.client.request(
            "read",
            "GET",
            f"/crm/v3/objects/{objects}/{record_id}",
            params={"properties": ",".join(fields), "archived": "false"} if fields else {"archived": "false"},
        )
        if response.status_code == 404:
            return None
        body = _json(response, "read", ok=(200,))
        return RecordState(str(body["id"]), _properties(body, fields))

    # -- compare-and-set -----------------------------------------------------------------------
    async def write_many(
        self, object_type: ObjectType, items: Sequence[WriteItem], before_write: BeforeWriteMany | None = None
    ) -> list[WriteOutcome]:
        """Batch read, compare each item, batch update what may be written, batch re-read: three
        requests per 100 records. Items that resolve to one record (an id merged into another) are
        written in turns, each compared with what the turn before left."""
        outcomes: dict[int, WriteOutcome] = {}
        pending = list(range(len(items)))
        while pending:
            pending = await self._write_turn(object_type, items, pending, outcomes, before_write)
        return [outcomes[n] for n in range(len(items))]

    async def _write_turn(
        self,
        object_type: ObjectType,
        items: Sequence[WriteItem],
        pending: list[int],
        outcomes: dict[int, WriteOutcome],
        before_write: BeforeWriteMany | None,
    ) -> list[int]:
        """One read-compare-write-reread pass over ``pending``; returns the items left for the next
        turn (a second item for a record this turn writes)."""
        objects = OBJECTS[object_type]
        fields = sorted({c.field for n in pending for c in items[n].changes})
        states = await self.read(object_type, sorted({items[n].record_id for n in pending}), fields)
        planned: dict[int, tuple[str, dict[str, PropertyValue], list[FieldWrite]]] = {}
        later, taken = [], set()
        for n in pending:
            item, state = items[n], states.get(items[n].record_id)
            if state is None:
                outcomes[n] = RecordNotFoundError(f"HubSpot has no {object_type.value} {item.record_id}")
                continue
            if state.record_id in taken:
                later.append(n)
                continue
            current = {c.field: state.properties.get(c.field) for c in item.changes}
            writes = [
                FieldWrite(field=c.field, expected=c.previous, overwritten=current[c.field], new=c.proposed)
                for c in item.changes
            ]
            if all(same(c.field, current[c.field], c.proposed) for c in item.changes):
                outcomes[n] = WriteResult(WriteStatus.NOOP, writes, current)
                continue
            conflicts = [c.field for c in item.changes if not same(c.field, current[c.field], c.previous)]
            if conflicts:
                outcomes[n] = WriteResult(WriteStatus.CONFLICT, writes, current, conflicts)
                continue
            taken.add(state.record_id)
            planned[n] = (state.record_id, current, writes)
        if not planned:
            return later
        if before_write is not None:
            await before_write({n: current for n, (_, current, _) in planned.items()})
        response_ids: dict[int, list[str]] = {}
        order = list(planned)

        async def update(chunk: list[int]) -> None:
            inputs = [
                {
                    "id": planned[n][0],
                    "properties": {c.field: to_crm_string(c.proposed) for c in items[n].changes},
                }
                for n in chunk
            ]
            response = await self.client.request(
                "batch_update", "POST", f"/crm/v3/objects/{objects}/batch/update", json={"inputs": inputs}
            )
            body = _json(response, "batch update", ok=(200, 207))
            updated = {str(r["id"]): r for r in body.get("results", [])}
            for n in chunk:
                record_id = planned[n][0]
                refusal = _errors_for(body, record_id)
                if refusal:  # a 207: this record refused, the others of the call written
                    outcomes[n] = CrmRefusedError(
                        f"HubSpot refused the update of {objects} {record_id}: {refusal}"
                    )
                    continue
                done = updated.get(record_id)
                response_ids[n] = (
                    [f"hubspot:{objects}/{record_id}@{done.get('updatedAt', '')}"] if done else []
                )

        await _together(update(order[at : at + BATCH]) for at in range(0, len(order), BATCH))
        # No conditional write in HubSpot: read again, and say if another writer got in right after us.
        written = [n for n in order if n not in outcomes]
        again = await self.read(object_type, sorted({planned[n][0] for n in written}), fields)
        for n in written:
            record_id, current, writes = planned[n]
            state = again.get(record_id)
            moved = [
                c.field
                for c in items[n].changes
                if state is not None and not same(c.field, state.properties.get(c.field), c.proposed)
            ]
            note = f"changed by another writer right after this write: {', '.join(moved)}" if moved else None
            outcomes[n] = WriteResult(
                WriteStatus.APPLIED, writes, current, response_ids=response_ids[n], note=note
            )
        return later

    # -- merges --------------------------------------------------------------------------------
    async def merge(self, object_type: ObjectType, survivor: str, losers: Sequence[str]) -> MergeResult:
        """HubSpot merges two records per call, into a new id: each loser in turn joins the record
        the previous call made."""
        objects = OBJECTS[object_type]
        primary, response_ids = survivor, []
        for loser in losers:
            response = await self.client.request(
                "merge",
                "POST",
                f"/crm/v3/objects/{objects}/merge",
                json={"primaryObjectId": primary, "objectIdToMerge": loser},
            )
            if response.status_code == 404:
                raise RecordNotFoundError(f"HubSpot has no {object_type.value} {primary} or {loser} to merge")
            body = _json(response, "merge", ok=(200,))
            primary = str(body["id"])
            response_ids.append(f"hubspot:{objects}/{primary}")
        return MergeResult(primary, response_ids)

    # -- owners --------------------------------------------------------------------------------
    async def owner_status(self, owner_id: str) -> OwnerStatus:
        if not owner_id.isdigit():
            return OwnerStatus.UNKNOWN  # HubSpot owner ids are numbers
        for archived in ("false", "true"):
            response = await self.client.request(
                "owner",
                "GET",
                f"/crm/v3/owners/{owner_id}",
                params={"idProperty": "id", "archived": archived},
            )
            if response.status_code == 404:
                continue
            body = _json(response, "owner", ok=(200,))
            return OwnerStatus.ARCHIVED if body.get("archived") or archived == "true" else OwnerStatus.ACTIVE
        return OwnerStatus.UNKNOWN

    # -- the records, a page at a time (an import) ---------------------------------------------
    async def list_page(
        self, object_type: ObjectType, fields: Sequence[str], after: str | None, limit: int
    ) -> RecordPage:
        """HubSpot's list endpoint: at most 100 a page, by its ``after`` cursor."""
        objects = OBJECTS[object_type]
        params: dict[str, Any] = {"limit": min(limit, BATCH), "archived": "false"}
        if fields:
            params["properties"] = ",".join(fields)
        if after is not None:
            params["after"] = after
        response = await self.client.request("list", "GET", f"/crm/v3/objects/{objects}", params=params)
        body = _json(response, "list", ok=(200,))
        records = [
            SnapshotRecord(
                str(result["id"]),
                _properties(result, [*fields, *DEFAULT_LISTED]),
                datetime.fromisoformat(str(result["updatedAt"]).replace("Z", "+00:00")),
            )
            for result in body.get("results", [])
        ]
        following = ((body.get("paging") or {}).get("next") or {}).get("after")
        return RecordPage(records, str(following) if following else None)

    async def count(self, object_type: ObjectType) -> int | None:
        """The total of an empty search (one call; HubSpot's search has a lower rate limit of its
        own, so it is asked once, not per page). None when HubSpot will not say."""
        response = await self.client.request(
            "search",
            "POST",
            f"/crm/v3/objects/{OBJECTS[object_type]}/search",
            json={"filterGroups": [], "sorts": [], "properties": ["hs_object_id"], "limit": 1, "after": "0"},
        )
        if response.status_code != 200:
            return None
        total = response.json().get("total")
        return int(total) if isinstance(total, int) else None


async def _together(calls: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Calls sent together; if one fails, the others are cancelled and waited for before its error
    is raised (no request of ours is left in flight behind the caller's back)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [t.result() for t in tasks]


def _json(response: httpx.Response, what: str, ok: tuple[int, ...]) -> dict[str, Any]:
    if response.status_code in (401, 403):
        raise CrmRefusedError(
            f"HubSpot {what}: {response.status_code} — check the private app's token and scopes"
        )
    if response.status_code not in ok:
        raise CrmRefusedError(f"HubSpot {what}: {response.status_code} {response.text[:500]}")
    body: dict[str, Any] = response.json()
    return body


def _properties(result: dict[str, Any], fields: Sequence[str]) -> dict[str, PropertyValue]:
    props = result.get("properties") or {}
    return {f: props.get(f) for f in fields}


def _named_in_errors(body: dict[str, Any], record_id: str, category: str | None = None) -> bool:
    for error in body.get("errors") or []:
        ids = (error.get("context") or {}).get("ids") or []
        if record_id in ids and (category is None or error.get("category") == category):
            return True
    return False


def _errors_for(body: dict[str, Any], record_id: str) -> str | None:
    messages = [
        f"{e.get('category')}: {e.get('message')}"
        for e in body.get("errors") or []
        if record_id in ((e.get("context") or {}).get("ids") or [])
    ]
    return "; ".join(messages) or None
