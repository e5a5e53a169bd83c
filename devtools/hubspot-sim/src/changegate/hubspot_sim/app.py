"""A stateful HubSpot CRM v3 simulator: what `changegate dev up --crm hubspot-sim` runs instead of a
portal, and what the tests and benchmarks run the HubSpot adapter against.

When HubSpot's OpenAPI documents are at hand (``validation.py``) every request to the CRM paths is
validated against them before it is handled, and every answer after; a request HubSpot would refuse
is answered 400 and recorded in ``violations``, so a test that sends one fails. Without them nothing
is checked against the documents, and ``/_sim/info`` says so.

It keeps contacts, companies and owners with HubSpot's semantics: ids are numbers HubSpot assigns;
the list endpoint pages 100 at most by an ``after`` cursor in id order; a merge makes a new id both
old ids resolve to; a deleted record is gone. It answers with HubSpot's rate-limit headers and
enforces a rolling window when told to (``/_sim/rate``), can be told to answer 429, 423, 5xx, a 207
partial failure, or slowly (``/_sim/faults``), and reports every change to a webhook subscription
(``webhooks.py``) as HubSpot reports changes to an app: who made the change is the token's
(``Actor``): the private app the executor writes with (changeSource INTEGRATION, sourceId its app id)
or a person in HubSpot's UI (CRM_UI).

Control endpoints (not HubSpot's) live under ``/_sim``."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from changegate.hubspot_sim.validation import Validator
from changegate.hubspot_sim.webhooks import Subscription, WebhookQueue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

OBJECTS = ("contacts", "companies")
SUBSCRIPTION_OBJECT = {"contacts": "contact", "companies": "company"}
CORRELATION_ID = "00000000-0000-4000-8000-000000000000"
DEFAULT_PROPERTIES = {
    "contacts": ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"),
    "companies": ("createdate", "domain", "hs_object_id", "name"),
}
MAX_PAGE = 100  # HubSpot's most per page of the list endpoint
MAX_SEARCH_PAGE = 200
# The simulated portal and the private app the executor writes with (HubSpot's documentation ids).
PORTAL_ID = 62515
APP_ID = 1160452
TOKEN = "sim-token"  # the executor's private-app token: its writes come back with sourceId APP_ID
UI_TOKEN = "sim-ui-token"  # a person working in HubSpot's UI: their changes are nobody's echo


@dataclass(frozen=True)
class Actor:
    """Who a token writes as, as HubSpot's webhooks report it."""

    change_source: str
    source_id: str


def default_tokens() -> dict[str, Actor]:
    return {TOKEN: Actor("INTEGRATION", str(APP_ID)), UI_TOKEN: Actor("CRM_UI", "userId:1")}


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Fault:
    """Answer the next ``count`` matching requests with ``status`` (or only delay them)."""

    status: int | None = None
    count: int = 1
    path: str = ""  # substring of the path; "" matches every CRM path
    retry_after: float | None = None
    delay: float = 0.0
    apply_first: bool = False  # handle the request (change state), then answer slowly / with status
    fail_ids: list[str] = field(default_factory=list)  # batch update: 207 errors for these inputs
    seconds: float | None = None  # an outage: every matching request for this long (count aside)
    ends_at: float | None = None  # set when the fault is put, from ``seconds``


# A CRM call's handler: the request, its JSON body, who asks, the fault injected (if any).
Handler = Callable[[Request, dict[str, Any] | None, "Actor", "Fault | None"], Awaitable[Response]]


@dataclass
class Record:
    properties: dict[str, str | None]
    created_ms: int
    updated_ms: int


def _order(record_id: str) -> tuple[int, str]:
    """HubSpot's ids are numbers: in number order (and any other id after the shorter ones)."""
    return len(record_id), record_id


@dataclass
class Objects:
    """The records of one object type, their ids in order (the list endpoint's order), and where
    merged-away ids lead."""

    records: dict[str, Record] = field(default_factory=dict)
    order: list[tuple[int, str]] = field(default_factory=list)
    redirects: dict[str, str] = field(default_factory=dict)

    def put(self, record_id: str, record: Record) -> None:
        if record_id not in self.records:
            bisect.insort(self.order, _order(record_id))
        self.records[record_id] = record

    def drop(self, record_id: str) -> None:
        if self.records.pop(record_id, None) is not None:
            del self.order[bisect.bisect_left(self.order, _order(record_id))]

    def resolve(self, record_id: str) -> str | None:
        seen = 0
        while record_id in self.redirects and seen < 32:
            record_id, seen = self.redirects[record_id], seen + 1
        return record_id if record_id in self.records else None

    def ids(self) -> list[str]:
        return [rid for _, rid in self.order]

    def page(self, after: str, limit: int) -> tuple[list[str], str | None]:
        """Up to ``limit`` ids from ``after`` on (an id: the first of the page), and the cursor of
        the next page (None: this is the last)."""
        start = bisect.bisect_left(self.order, _order(after)) if after else 0
        ids = [rid for _, rid in self.order[start : start + limit]]
        following = self.order[start + limit][1] if start + limit < len(self.order) else None
        return ids, following


@dataclass
class State:
    objects: dict[str, Objects] = field(default_factory=lambda: {o: Objects() for o in OBJECTS})
    owners: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)  # method, path, body, when: what was asked
    violations: list[str] = field(default_factory=list)  # requests/answers HubSpot's documents refuse
    next_id: int = 1000
    rate_max: int | None = None  # requests in any window before 429 (None: unlimited)
    rate_window: float = 10.0
    accepted: deque[float] = field(default_factory=deque)  # when the requests in the window came

    def new_id(self) -> str:
        self.next_id += 1
        return str(self.next_id)


def _error(status: int, message: str, category: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error as HubSpot answers one (its documented Error object)."""
    body = {"status": "error", "message": message, "correlationId": CORRELATION_ID, "category": category}
    return JSONResponse(body, status_code=status, headers=headers)


def _oid(record_id: str) -> int | str:
    """An id as HubSpot's webhooks carry it: a number."""
    return int(record_id) if record_id.isdigit() else record_id


def _string(value: Any) -> str | None:
    """HubSpot keeps every property as a string; "" clears it."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def create_app(
    specs_dir: Path | None,
    token: str = TOKEN,
    *,
    tokens: dict[str, Actor] | None = None,
    subscription: Subscription | None = None,
    population: tuple[int, int] | None = None,
) -> Starlette:
    """The simulator. ``specs_dir`` holds ``hubspot/*.json`` (None or absent: no validation);
    ``token`` is the executor's private-app token (added to ``tokens``, which default to it and
    ``UI_TOKEN``); ``subscription``: where webhooks go (also settable at ``/_sim/webhooks``);
    ``population``: (contacts, seed) of a realistic population to start with (``seed.py``)."""
    validator = Validator(specs_dir)
    known = {**default_tokens(), **(tokens or {})}
    if token not in known:
        known[token] = Actor("INTEGRATION", str(APP_ID))
    state = State()
    hooks = WebhookQueue(subscription)

    def properties_asked(request: Request) -> list[str] | None:
        values = request.query_params.getlist("properties")
        names = [n for v in values for n in v.split(",") if n]
        return names or None

    def public(objects: str, record_id: str, properties: list[str] | None) -> dict[str, Any]:
        record = state.objects[objects].records[record_id]
        names = list(DEFAULT_PROPERTIES[objects]) + [
            p for p in properties or [] if p not in DEFAULT_PROPERTIES[objects]
        ]
        props = {name: record.properties.get(name) for name in names}
        props["hs_object_id"] = record_id
        return {
            "id": record_id,
            "properties": props,
            "createdAt": iso(record.created_ms),
            "updatedAt": iso(record.updated_ms),
            "archived": False,
        }

    def event(objects: str, action: str, actor: Actor, stamp: int, **fields: Any) -> dict[str, Any]:
        return {
            "subscriptionType": f"{SUBSCRIPTION_OBJECT[objects]}.{action}",
            "occurredAt": stamp,
            "changeSource": actor.change_source,
            "sourceId": actor.source_id,
            **fields,
        }

    def create(
        objects: str, props: dict[str, Any], actor: Actor | None, stamp: int, record_id: str | None = None
    ) -> str:
        """A new record; its creation and each property set reported (a person or an app made it;
        ``actor`` None: it predates the subscription, as records seeded before changegate came)."""
        rid = record_id or state.new_id()
        values = {k: None if v is None else _string(v) or "" for k, v in props.items()}
        values.update(createdate=iso(stamp), lastmodifieddate=iso(stamp), hs_object_id=rid)
        state.objects[objects].put(rid, Record(values, stamp, stamp))
        if actor is not None:
            set_now = [(k, s) for k, v in sorted(props.items()) if (s := _string(v)) is not None]
            created = event(objects, "creation", actor, stamp, objectId=_oid(rid), changeFlag="CREATED")
            hooks.emit([created, *property_changes(objects, rid, set_now, actor, stamp)])
        return rid

    def update(objects: str, rid: str, props: dict[str, Any], actor: Actor | None, stamp: int) -> None:
        record = state.objects[objects].records[rid]
        changed = []
        for name, value in props.items():
            new = _string(value)
            if record.properties.get(name) != new:
                record.properties[name] = new
                changed.append((name, new))
        if changed:
            record.updated_ms = stamp
            record.properties["lastmodifieddate"] = iso(stamp)
        if actor is not None:
            hooks.emit(property_changes(objects, rid, changed, actor, stamp))

    def property_changes(
        objects: str, rid: str, changes: Sequence[tuple[str, str | None]], actor: Actor, stamp: int
    ) -> list[dict[str, Any]]:
        """One ``propertyChange`` webhook per property set; HubSpot reports a cleared value as ""."""
        return [
            event(
                objects,
                "propertyChange",
                actor,
                stamp,
                objectId=_oid(rid),
                propertyName=name,
                propertyValue=value or "",
            )
            for name, value in changes
        ]

    def not_found(objects: str, ids: list[str]) -> dict[str, Any]:
        return {
            "status": "error",
            "category": "OBJECT_NOT_FOUND",
            "message": f"Could not get some {objects} objects, they may be deleted or not exist.",
            "context": {"ids": ids},
            "errors": [],
            "links": {},
        }

    def batch(results: list[dict[str, Any]], errors: list[dict[str, Any]]) -> JSONResponse:
        stamp = iso(now_ms())
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": stamp,
            "completedAt": stamp,
        }
        if errors:
            body.update(errors=errors, numErrors=len(errors))
            return JSONResponse(body, status_code=207)
        return JSONResponse(body)

    # -- HubSpot's CRM API ---------------------------------------------------------------------
    async def list_page(
        request: Request, body: dict[str, Any] | None, actor: Actor, fault: Fault | None
    ) -> Response:
        objects = request.path_params["objects"]
        limit = min(int(request.query_params.get("limit", "10")), MAX_PAGE)
        after = request.query_params.get("after", "")
        if request.query_params.get("archived", "false") == "true":
            return JSONResponse({"results": []})
        ids, following = state.objects[objects].page(after, limit)
        answer: dict[str, Any] = {"results": [public(objects, rid, properties_asked(request)) for rid in ids]}
        if following is not None:
            answer["paging"] = {"next": {"after": str(following), "link": f"?after={following}"}}
        state.calls[-1]["results"] = len(ids)
        return JSONResponse(answer)

    async def create_one(
        request: Request, body: dict[str, Any] | None, actor: Actor, fault: Fault | None
    ) -> Response:
        assert body is not None
        objects = request.path_params["objects"]
        rid = create(objects, body["properties"], actor, now_ms())
        return JSONResponse(public(objects, rid, list(body["properties"])), status_code=201)

    async def search(
        request: Request, body: dict[str, Any] | None, actor: Actor, fault: Fault | None
    ) -> Response:
        assert body is not None
        objects = request.path_params["objects"]
        filters = [f for group in body.get("filterGroups") or [] for f in group.get("filters") or []]
        if len(body.get("filterGroups") or []) > 1 or any(f["operator"] != "EQ" for f in filters):
            return _error(
                400, "the simulator searches with one group of EQ filters at most", "VALIDATION_ERROR"
            )
        store = state.objects[objects]
        matching = [
            rid
            for rid in store.ids()
            if all(store.records[rid].properties.get(f["propertyName"]) == f.get("value") for f in filters)
        ]
        start = int(body.get("after") or 0)
        limit = min(int(body.get("limit") or 10), MAX_SEARCH_PAGE)
        page = matching[start : start + limit]
        answer: dict[str, Any] = {
            "total": len(matching),
            "results": [
                {k: v for k, v in public(objects, rid, body.get("properties")).items() if k != "archived"}
                for rid in page
            ],
        }
        if start + limit < len(matching):
            answer["paging"] = {"next": {"after": str(start + limit)}}
        return JSONResponse(answer)

    async def batch_read(
        request: Request, body: dict[str, Any] | None, actor: Actor, fault: Fault | None
    ) -> Response:
        assert body is not None
        objects = request.path_params["objects"]
        results, missing = [], []
        for item in body["inputs"]:
            rid = state.objects[objects].resolve(str(item["id"]))
            if rid is None:
                missing.append(str(item["id"]))
            else:
                results.append(public(objects, rid, body.get("properties")))
        return batch(results, [not_found(objects, missing)] if missing else [])

    async def batch_update(
        request: Request, body: dict[str, Any] | None, actor: Actor, fault: Fault | None
    ) -> Response:
        assert body is not None
        objects = request.path_params["objects"]
        results, errors = [], []
        stamp = now_ms()
        for item in body["inputs"]:
            rid = state.objects[objects].resolve(str(item["id"]))
            if rid is None:
                errors.append(not_found(objects, [str(item["id"])]))
                continue
            if fault and str(item["id"]) in fault.fail_ids:
                errors.append(
                    {
                        "status": "error",
                        "category": "VALIDATION_ERROR",
                        "message": "Property values were not valid",
                        "context": {"ids": [str(item["id"])]},
                        "errors": [],
                        "links": {},
                    }
                )
                continue
            update(objects, rid, item["properties"], actor, stamp)
            results.append(public(objects, rid, list(item["properties"])))
        return batch(results, errors)

    async def merge(
        request: Request, body: dict[str, Any] | None, actor: Actor, fault: Fault | None
    ) -> Response:
        assert body is not None
        objects = request.path_params["objects"]
        store = state.objects[objects]
        primary, other = store.resolve(body["primaryObjectId"]), store.resolve(body["objectIdToMerge"])
        if primary is None or other is None or primary == other:
            return _error(404, "Object not found", "OBJECT_NOT_FOUND")
        a, b = store.records[primary], store.records[other]
        props: dict[str, str | None] = {
            **{k: v for k, v in b.properties.items() if v not in (None, "")},
            **{k: v for k, v in a.properties.items() if v not in (None, "")},
        }
        merged_ids = [x for x in str(props.get("hs_merged_object_ids") or "").split(";") if x] + [
            primary,
            other,
        ]
        props["hs_merged_object_ids"] = ";".join(merged_ids)
        stamp = now_ms()
        new_id = state.new_id()
        props.update(hs_object_id=new_id, lastmodifieddate=iso(stamp))
        store.put(new_id, Record(props, a.created_ms, stamp))
        for old in (primary, other):
            store.drop(old)
            store.redirects[old] = new_id
        hooks.emit(
            [
                event(
                    objects,
                    "merge",
                    actor,
                    stamp,
                    objectId=_oid(new_id),
                    primaryObjectId=_oid(primary),
                    mergedObjectIds=[_oid(other)],
                    newObjectId=_oid(new_id),
                    numberOfPropertiesMoved=len(b.properties),
                )
            ]
        )
        return JSONResponse(public(objects, new_id, list(props)))

    async def read_one(
        request: Request, body: dict[str, Any] | None, actor: Actor, fault: Fault | None
    ) -> Response:
        objects = request.path_params["objects"]
        rid = state.objects[objects].resolve(request.path_params["record_id"])
        if rid is None:
            return _error(404, "Object not found", "OBJECT_NOT_FOUND")
        return JSONResponse(public(objects, rid, properties_asked(request)))

    async def patch_one(
        request: Request, body: dict[str, Any] | None, actor: Actor, fault: Fault | None
    ) -> Response:
        assert body is not None
        objects = request.path_params["objects"]
        rid = state.objects[objects].resolve(request.path_params["record_id"])
        if rid is None:
            return _error(404, "Object not found", "OBJECT_NOT_FOUND")
        update(objects, rid, body["properties"], actor, now_ms())
        return JSONResponse(public(objects, rid, list(body["properties"])))

    async def archive_one(
        request: Request, body: dict[str, Any] | None, actor: Actor, fault: Fault | None
    ) -> Response:
        objects = request.path_params["objects"]
        rid = state.objects[objects].resolve(request.path_params["record_id"])
        if rid is not None:
            state.objects[objects].drop(rid)
            hooks.emit(
                [event(objects, "deletion", actor, now_ms(), objectId=_oid(rid), changeFlag="DELETED")]
            )
        return Response(status_code=204)

    def owner_body(owner_id: str, found: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": owner_id,
            "email": found.get("email"),
            "firstName": found.get("firstName") or "",
            "lastName": found.get("lastName") or "",
            "archived": found["archived"],
            "createdAt": found["createdAt"],
            "updatedAt": found["createdAt"],
        }

    async def owner(
        request: Request, body: dict[str, Any] | None, actor: Actor, fault: Fault | None
    ) -> Response:
        owner_id = request.path_params["owner_id"]
        archived = request.query_params.get("archived", "false") == "true"
        found = state.owners.get(owner_id)
        if found is None or found["archived"] != archived:
            return _error(404, "Owner not found", "OBJECT_NOT_FOUND")
        return JSONResponse(owner_body(owner_id, found))

    async def owners_page(
        request: Request, body: dict[str, Any] | None, actor: Actor, fault: Fault | None
    ) -> Response:
        archived = request.query_params.get("archived", "false") == "true"
        email = request.query_params.get("email")
        found = [
            owner_body(oid, o)
            for oid, o in sorted(
                state.owners.items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0
            )
            if o["archived"] == archived and (email is None or o.get("email") == email)
        ]
        return JSONResponse({"results": found})

    def route_handler(request: Request) -> tuple[str, Handler]:
        """The API document and the handler of a CRM path."""
        path, method = request.url.path, request.method
        if path.startswith("/crm/v3/owners"):
            return "owners", owner if "owner_id" in request.path_params else owners_page
        objects = request.path_params["objects"]
        if path.endswith("/batch/read"):
            return objects, batch_read
        if path.endswith("/batch/update"):
            return objects, batch_update
        if path.endswith("/merge"):
            return objects, merge
        if path.endswith("/search"):
            return objects, search
        if "record_id" not in request.path_params:
            return objects, list_page if method == "GET" else create_one
        return objects, {"GET": read_one, "PATCH": patch_one, "DELETE": archive_one}[method]

    async def crm(request: Request) -> Response:
        """Every CRM call: auth, validation against HubSpot's documents, faults, rate limit, handler."""
        path = request.url.path
        objects = request.path_params.get("objects")
        if objects is not None and objects not in OBJECTS:
            return JSONResponse(
                {"status": "error", "message": f"Unknown object type {objects}"}, status_code=404
            )
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        state.calls.append(
            {
                "method": request.method,
                "path": path,
                "query": str(request.url.query),
                "body": body,
                "at": time.monotonic(),  # the simulator's clock: to check a rate limit was kept
            }
        )
        actor = known.get(request.headers.get("authorization", "").removeprefix("Bearer "))
        if actor is None:
            return _error(401, "Authentication credentials not found", "INVALID_AUTHENTICATION")
        api, handler = route_handler(request)
        errors = validator.request_errors(api, request, raw)
        if errors:
            state.violations.append(f"{request.method} {path}: {'; '.join(errors)}")
            return _error(400, "; ".join(errors), "VALIDATION_ERROR")
        if raw and not isinstance(body, dict):
            return _error(400, "the body is not a JSON object", "VALIDATION_ERROR")
        limited = rate_limited()
        if limited is not None:
            state.calls[-1]["status"] = 429
            return limited
        now = time.monotonic()
        fault = next(
            (
                f
                for f in state.faults
                if f.path in path and (now < f.ends_at if f.ends_at is not None else f.count > 0)
            ),
            None,
        )
        if fault is not None:
            if fault.status is not None and not fault.apply_first:
                state.calls[-1]["status"] = fault.status
            fault.count -= 1
            if fault.delay and not fault.apply_first:
                await asyncio.sleep(fault.delay)
            if fault.status is not None and not fault.apply_first:
                return injected(fault)
        response = await handler(request, body, actor, fault)
        if fault is not None and fault.apply_first:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                return injected(fault)
        for error in validator.response_errors(api, request, raw, response):
            state.violations.append(f"answer to {request.method} {path}: {error}")
        return with_rate_headers(response)

    def injected(fault: Fault) -> Response:
        status = fault.status or 500
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        message = {429: "You have reached your ten_secondly_rolling limit.", 423: "Record locked"}.get(
            status, "Internal error"
        )
        category = {429: "RATE_LIMITS", 423: "LOCKED"}.get(status, "INTERNAL_ERROR")
        return _error(status, message, category, headers)

    def rate_limited() -> Response | None:
        """HubSpot's ten-secondly limit is a rolling window: at most ``rate_max`` requests in any
        ``rate_window`` seconds."""
        if state.rate_max is None:
            return None
        now = time.monotonic()
        while state.accepted and state.accepted[0] <= now - state.rate_window:
            state.accepted.popleft()
        if len(state.accepted) < state.rate_max:
            state.accepted.append(now)
            return None
        left = state.accepted[0] + state.rate_window - now
        return with_rate_headers(injected(Fault(status=429, retry_after=round(max(left, 0.001), 3))))

    def with_rate_headers(response: Response) -> Response:
        if state.rate_max is not None:
            response.headers["X-HubSpot-RateLimit-Max"] = str(state.rate_max)
            response.headers["X-HubSpot-RateLimit-Remaining"] = str(
                max(0, state.rate_max - len(state.accepted))
            )
            response.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] = str(int(state.rate_window * 1000))
        return response

    def seed_population(contacts: int, seed: int) -> dict[str, int]:
        """No webhooks: the records were there before the app subscribed."""
        from changegate.hubspot_sim.seed import population as make

        made = make(contacts, seed)
        stamp = now_ms() - 86_400_000  # made a day ago, one a millisecond
        for owner_id, found in made.owners.items():
            state.owners[owner_id] = {**found, "createdAt": iso(stamp)}
        counts = {}
        for objects, records in made.records.items():
            for i, props in enumerate(records):
                create(objects, props, None, stamp + i)
            counts[objects] = len(records)
        return counts

    if population is not None:
        seed_population(*population)

    # -- control -------------------------------------------------------------------------------
    async def reset(request: Request) -> Response:
        nonlocal state
        state = State()
        hooks.events.clear()
        return JSONResponse({"ok": True})

    async def put_records(request: Request) -> Response:
        """Seed records: {"records": [{"id", "properties", "objects"}], "notify": false}; with
        notify they are reported as made by a person in HubSpot's UI."""
        body = await request.json()
        actor = known[UI_TOKEN] if body.get("notify") else None
        stamp = now_ms()
        for item in body["records"]:
            objects = item.get("objects", "contacts")
            rid = str(item["id"]) if item.get("id") is not None else None
            existing = state.objects[objects].records.get(rid) if rid else None
            if rid is not None and existing is not None:
                update(objects, rid, item["properties"], actor, stamp)
            else:
                create(objects, item["properties"], actor, stamp, rid)
            if rid is not None and rid.isdigit():
                state.next_id = max(state.next_id, int(rid))
        return JSONResponse({"ok": True})

    async def get_record(request: Request) -> Response:
        objects, rid = request.path_params["objects"], request.path_params["record_id"]
        resolved = state.objects[objects].resolve(rid)
        if resolved is None:
            return JSONResponse({"found": False}, status_code=404)
        record = state.objects[objects].records[resolved]
        return JSONResponse({"id": resolved, "properties": record.properties, "updatedAt": record.updated_ms})

    async def delete_record(request: Request) -> Response:
        objects, rid = request.path_params["objects"], request.path_params["record_id"]
        resolved = state.objects[objects].resolve(rid)
        if resolved is not None:
            state.objects[objects].drop(resolved)
        return JSONResponse({"ok": True})

    async def put_owners(request: Request) -> Response:
        for item in (await request.json())["owners"]:
            state.owners[str(item["id"])] = {
                "email": item.get("email"),
                "firstName": item.get("firstName"),
                "lastName": item.get("lastName"),
                "archived": bool(item.get("archived", False)),
                "createdAt": iso(now_ms()),
            }
        return JSONResponse({"ok": True})

    async def put_fault(request: Request) -> Response:
        fault = Fault(**(await request.json()))
        if fault.seconds is not None:
            fault.ends_at = time.monotonic() + fault.seconds
        state.faults.append(fault)
        return JSONResponse({"ok": True})

    async def clear_faults(request: Request) -> Response:
        state.faults.clear()
        return JSONResponse({"ok": True})

    async def put_rate(request: Request) -> Response:
        body = await request.json()
        state.rate_max, state.rate_window = body.get("max"), float(body.get("window", 10.0))
        state.accepted.clear()
        return JSONResponse({"ok": True})

    async def get_log(request: Request) -> Response:
        return JSONResponse({"calls": state.calls, "violations": state.violations})

    async def put_webhooks(request: Request) -> Response:
        body = await request.json()
        properties = body.get("properties")
        hooks.subscription = Subscription(
            url=body["url"],
            client_secret=body["client_secret"],
            app_id=int(body.get("app_id", APP_ID)),
            portal_id=int(body.get("portal_id", PORTAL_ID)),
            properties=frozenset(properties) if properties is not None else None,
        )
        return JSONResponse({"ok": True})

    async def flush_webhooks(request: Request) -> Response:
        """Answers once every change so far has been reported to the subscription (or given up on)."""
        try:
            async with asyncio.timeout(float(request.query_params.get("timeout", "30"))):
                await hooks.flush()
            done = True
        except TimeoutError:
            done = False
        body = {
            "flushed": done,
            "delivered": hooks.delivered,
            "pending": len(hooks.events),
            "failures": hooks.failures,
        }
        return JSONResponse(body, status_code=200 if done else 504)

    async def info(request: Request) -> Response:
        return JSONResponse(
            {
                "simulator": "changegate hubspot-sim",
                "validating": validator.active,
                "validation": validator.describe(),
                "records": {o: len(s.records) for o, s in state.objects.items()},
                "owners": len(state.owners),
                "portal_id": PORTAL_ID,
                "app_id": APP_ID,
                "webhooks": None if hooks.subscription is None else hooks.subscription.url,
                "webhooks_delivered": hooks.delivered,
                "webhook_failures": hooks.failures,
            }
        )

    async def seed(request: Request) -> Response:
        """A realistic population (``seed.py``): {"contacts": N, "seed": S}."""
        body = await request.json()
        counts = seed_population(int(body.get("contacts", 1000)), int(body.get("seed", 1)))
        return JSONResponse({"ok": True, "records": counts, "owners": len(state.owners)})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=10) as client:
            sender = asyncio.create_task(hooks.run(client))
            try:
                yield
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender

    objects_path = "/crm/v3/objects/{objects:str}"
    return Starlette(
        routes=[
            Route("/readyz", ready, methods=["GET"]),
            Route("/_sim/info", info, methods=["GET"]),
            Route("/_sim/reset", reset, methods=["POST"]),
            Route("/_sim/seed", seed, methods=["POST"]),
            Route("/_sim/records", put_records, methods=["POST"]),
            Route("/_sim/records/{objects}/{record_id}", get_record, methods=["GET"]),
            Route("/_sim/records/{objects}/{record_id}", delete_record, methods=["DELETE"]),
            Route("/_sim/owners", put_owners, methods=["POST"]),
            Route("/_sim/faults", put_fault, methods=["POST"]),
            Route("/_sim/faults", clear_faults, methods=["DELETE"]),
            Route("/_sim/rate", put_rate, methods=["POST"]),
            Route("/_sim/log", get_log, methods=["GET"]),
            Route("/_sim/webhooks", put_webhooks, methods=["POST"]),
            Route("/_sim/webhooks/flush", flush_webhooks, methods=["POST"]),
            Route(objects_path, crm, methods=["GET", "POST"]),
            Route(f"{objects_path}/batch/read", crm, methods=["POST"]),
            Route(f"{objects_path}/batch/update", crm, methods=["POST"]),
            Route(f"{objects_path}/merge", crm, methods=["POST"]),
            Route(f"{objects_path}/search", crm, methods=["POST"]),
            Route(f"{objects_path}/{{record_id:str}}", crm, methods=["GET", "PATCH", "DELETE"]),
            Route("/crm/v3/owners/", crm, methods=["GET"]),
            Route("/crm/v3/owners/{owner_id:str}", crm, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
