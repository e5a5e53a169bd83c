"""A stateful HubSpot CRM v3 simulator for tests, validated against HubSpot's own OpenAPI documents.

Every request to the CRM paths is validated with openapi-core against ``../shared/specs/hubspot``
(contacts, companies, owners) before it is handled, and every answer after; a request HubSpot would
refuse is answered 400 and recorded in ``violations``, so a test that sends one fails. It keeps
records, merges (a merge makes a new id both old ids resolve to) and owners with HubSpot's
semantics, sends HubSpot's rate-limit headers, and can be told to answer 429, 423, 5xx, a 207
partial failure, or slowly.

Control endpoints (not HubSpot's) live under ``/_sim``."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from openapi_core import Config, OpenAPI
from openapi_core.contrib.starlette import StarletteOpenAPIRequest, StarletteOpenAPIResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

OBJECTS = ("contacts", "companies")
SPEC_FILES = {
    "contacts": "crm-contacts.v3.json",
    "companies": "crm-companies.v3.json",
    "owners": "crm-owners.v3.json",
}
CORRELATION_ID = "00000000-0000-4000-8000-000000000000"
DEFAULT_PROPERTIES = ("createdate", "hs_object_id", "lastmodifieddate")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


@dataclass
class State:
    records: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {o: {} for o in OBJECTS})
    redirects: dict[str, dict[str, str]] = field(default_factory=lambda: {o: {} for o in OBJECTS})
    owners: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)  # method, path, body: what was asked
    violations: list[str] = field(default_factory=list)  # requests/answers HubSpot's documents refuse
    next_id: int = 1000
    rate_max: int | None = None  # requests per window before 429 (None: unlimited)
    rate_window: float = 10.0
    window_started: float = 0.0
    window_count: int = 0


def _error(status: int, message: str, category: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error as HubSpot answers one (its documented Error object)."""
    body = {"status": "error", "message": message, "correlationId": CORRELATION_ID, "category": category}
    return JSONResponse(body, status_code=status, headers=headers)


def _explain(error: Exception) -> str:
    """openapi-core nests the schema errors that say what was wrong under a general one."""
    causes = [str(c) for c in getattr(error, "schema_errors", []) or []]
    cause = error.__cause__
    causes += [str(c) for c in getattr(cause, "schema_errors", []) or []]
    return f"{error}" + (f" ({'; '.join(causes)})" if causes else "")


def _spec(specs_dir: Path, name: str) -> OpenAPI:
    document = json.loads((specs_dir / "hubspot" / SPEC_FILES[name]).read_text())
    document = copy.deepcopy(document)
    document["servers"] = [{"url": "/"}]  # served here, not at api.hubapi.com
    # HubSpot documents its error answers as "*/*" with a JSON schema: read them as the JSON they are.
    return OpenAPI.from_dict(document, config=Config(extra_media_type_deserializers={"*/*": json.loads}))


def create_app(specs_dir: Path, token: str = "sim-token") -> Starlette:
    specs = {name: _spec(specs_dir, name) for name in SPEC_FILES}
    state = State()

    def resolve(objects: str, record_id: str) -> str | None:
        seen = 0
        while record_id in state.redirects[objects] and seen < 32:
            record_id, seen = state.redirects[objects][record_id], seen + 1
        return record_id if record_id in state.records[objects] else None

    def public(objects: str, record_id: str, properties: list[str] | None) -> dict[str, Any]:
        record = state.records[objects][record_id]
        names = list(DEFAULT_PROPERTIES) + [p for p in properties or [] if p not in DEFAULT_PROPERTIES]
        props = {name: record["properties"].get(name) for name in names}
        props["hs_object_id"] = record_id
        return {
            "id": record_id,
            "properties": props,
            "createdAt": record["createdAt"],
            "updatedAt": record["updatedAt"],
            "archived": False,
        }

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
        stamp = _now()
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

    async def batch_read(request: Request, fault: Fault | None) -> Response:
        objects, body = request.path_params["objects"], await request.json()
        results, missing = [], []
        for item in body["inputs"]:
            rid = resolve(objects, str(item["id"]))
            if rid is None:
                missing.append(str(item["id"]))
            else:
                results.append(public(objects, rid, body.get("properties")))
        return batch(results, [not_found(objects, missing)] if missing else [])

    async def batch_update(request: Request, fault: Fault | None) -> Response:
        objects, body = request.path_params["objects"], await request.json()
        results, errors = [], []
        for item in body["inputs"]:
            rid = resolve(objects, str(item["id"]))
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
            record = state.records[objects][rid]
            for name, value in item["properties"].items():
                record["properties"][name] = value if value != "" else None
            record["updatedAt"] = _now()
            results.append(public(objects, rid, list(item["properties"])))
        return batch(results, errors)

    async def merge(request: Request, fault: Fault | None) -> Response:
        objects, body = request.path_params["objects"], await request.json()
        primary, other = resolve(objects, body["primaryObjectId"]), resolve(objects, body["objectIdToMerge"])
        if primary is None or other is None or primary == other:
            return _error(404, "Object not found", "OBJECT_NOT_FOUND")
        a, b = state.records[objects][primary], state.records[objects][other]
        props = {
            **{k: v for k, v in b["properties"].items() if v not in (None, "")},
            **{k: v for k, v in a["properties"].items() if v not in (None, "")},
        }
        merged_ids = [x for x in str(props.get("hs_merged_object_ids") or "").split(";") if x] + [
            primary,
            other,
        ]
        props["hs_merged_object_ids"] = ";".join(merged_ids)
        state.next_id += 1
        new_id = str(state.next_id)
        stamp = _now()
        state.records[objects][new_id] = {
            "properties": props,
            "createdAt": a["createdAt"],
            "updatedAt": stamp,
        }
        for old in (primary, other):
            del state.records[objects][old]
            state.redirects[objects][old] = new_id
        return JSONResponse(public(objects, new_id, list(props)))

    async def read_one(request: Request, fault: Fault | None) -> Response:
        objects = request.path_params["objects"]
        rid = resolve(objects, request.path_params["record_id"])
        if rid is None:
            return _error(404, "Object not found", "OBJECT_NOT_FOUND")
        asked = request.query_params.get("properties")
        return JSONResponse(public(objects, rid, asked.split(",") if asked else None))

    async def owner(request: Request, fault: Fault | None) -> Response:
        owner_id = request.path_params["owner_id"]
        archived = request.query_params.get("archived", "false") == "true"
        found = state.owners.get(owner_id)
        if found is None or found["archived"] != archived:
            return _error(404, "Owner not found", "OBJECT_NOT_FOUND")
        return JSONResponse(
            {
                "id": owner_id,
                "email": found.get("email"),
                "archived": found["archived"],
                "createdAt": found["createdAt"],
                "updatedAt": found["createdAt"],
            }
        )

    async def crm(request: Request) -> Response:
        """Every CRM call: auth, validation against HubSpot's documents, faults, rate limit, handler."""
        path = request.url.path
        objects = request.path_params.get("objects", "contacts")
        if objects not in OBJECTS:
            return JSONResponse(
                {"status": "error", "message": f"Unknown object type {objects}"}, status_code=404
            )
        body = await request.body()
        spec = specs["owners" if path.startswith("/crm/v3/owners") else objects]
        state.calls.append(
            {"method": request.method, "path": path, "body": json.loads(body) if body else None}
        )
        if request.headers.get("authorization") != f"Bearer {token}":
            return _error(401, "Authentication credentials not found", "INVALID_AUTHENTICATION")
        openapi_request = StarletteOpenAPIRequest(request, body)
        errors = [_explain(e) for e in spec.iter_request_errors(openapi_request)]
        if errors:
            state.violations.append(f"{request.method} {path}: {'; '.join(errors)}")
            return _error(400, "; ".join(errors), "VALIDATION_ERROR")
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
            state.calls[-1]["status"] = fault.status
            fault.count -= 1
            if fault.delay and not fault.apply_first:
                await asyncio.sleep(fault.delay)
            if fault.status is not None and not fault.apply_first:
                return injected(fault)
        response = await route_handler(request)(request, fault)
        if fault is not None and fault.apply_first:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                return injected(fault)
        assert isinstance(response, JSONResponse)
        for error in spec.iter_response_errors(
            openapi_request, StarletteOpenAPIResponse(response, bytes(response.body))
        ):
            state.violations.append(f"answer to {request.method} {path}: {error}")
        return with_rate_headers(response)

    def route_handler(request: Request) -> Callable[[Request, Fault | None], Awaitable[Response]]:
        path = request.url.path
        if path.endswith("/batch/read"):
            return batch_read
        if path.endswith("/batch/update"):
            return batch_update
        if path.endswith("/merge"):
            return merge
        if path.startswith("/crm/v3/owners/"):
            return owner
        return read_one

    def injected(fault: Fault) -> Response:
        status = fault.status or 500
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        message = {429: "You have reached your ten_secondly_rolling limit.", 423: "Record locked"}.get(
            status, "Internal error"
        )
        category = {429: "RATE_LIMITS", 423: "LOCKED"}.get(status, "INTERNAL_ERROR")
        return _error(status, message, category, headers)

    def rate_limited() -> Response | None:
        if state.rate_max is None:
            return None
        now = time.monotonic()
        if now - state.window_started >= state.rate_window:
            state.window_started, state.window_count = now, 0
        state.window_count += 1
        if state.window_count <= state.rate_max:
            return None
        left = state.rate_window - (now - state.window_started)
        response = injected(Fault(status=429, retry_after=round(left, 3)))
        return with_rate_headers(response)

    def with_rate_headers(response: Response) -> Response:
        if state.rate_max is not None:
            response.headers["X-HubSpot-RateLimit-Max"] = str(state.rate_max)
            response.headers["X-HubSpot-RateLimit-Remaining"] = str(
                max(0, state.rate_max - state.window_count)
            )
            response.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] = str(int(state.rate_window * 1000))
        return response

    # -- control -------------------------------------------------------------------------------
    async def reset(request: Request) -> Response:
        nonlocal state
        state = State()
        return JSONResponse({"ok": True})

    async def put_records(request: Request) -> Response:
        body = await request.json()
        stamp = _now()
        for item in body["records"]:
            props = {k: (None if v is None else str(v)) for k, v in item["properties"].items()}
            state.records[item.get("objects", "contacts")][str(item["id"])] = {
                "properties": props,
                "createdAt": stamp,
                "updatedAt": stamp,
            }
        return JSONResponse({"ok": True})

    async def get_record(request: Request) -> Response:
        objects, rid = request.path_params["objects"], request.path_params["record_id"]
        resolved = resolve(objects, rid)
        if resolved is None:
            return JSONResponse({"found": False}, status_code=404)
        return JSONResponse({"id": resolved, "properties": state.records[objects][resolved]["properties"]})

    async def put_owners(request: Request) -> Response:
        for item in (await request.json())["owners"]:
            state.owners[str(item["id"])] = {
                "email": item.get("email"),
                "archived": bool(item.get("archived", False)),
                "createdAt": _now(),
            }
        return JSONResponse({"ok": True})

    async def put_fault(request: Request) -> Response:
        fault = Fault(**(await request.json()))
        if fault.seconds is not None:
            fault.ends_at = time.monotonic() + fault.seconds
        state.faults.append(fault)
        return JSONResponse({"ok": True})

    async def put_rate(request: Request) -> Response:
        body = await request.json()
        state.rate_max, state.rate_window = body.get("max"), float(body.get("window", 10.0))
        state.window_started, state.window_count = time.monotonic(), 0
        return JSONResponse({"ok": True})

    async def get_log(request: Request) -> Response:
        return JSONResponse({"calls": state.calls, "violations": state.violations})

    return Starlette(
        routes=[
            Route("/_sim/reset", reset, methods=["POST"]),
            Route("/_sim/records", put_records, methods=["POST"]),
            Route("/_sim/records/{objects}/{record_id}", get_record, methods=["GET"]),
            Route("/_sim/owners", put_owners, methods=["POST"]),
            Route("/_sim/faults", put_fault, methods=["POST"]),
            Route("/_sim/rate", put_rate, methods=["POST"]),
            Route("/_sim/log", get_log, methods=["GET"]),
            Route("/crm/v3/objects/{objects:str}/batch/read", crm, methods=["POST"]),
            Route("/crm/v3/objects/{objects:str}/batch/update", crm, methods=["POST"]),
            Route("/crm/v3/objects/{objects:str}/merge", crm, methods=["POST"]),
            Route("/crm/v3/objects/{objects:str}/{record_id:str}", crm, methods=["GET"]),
            Route("/crm/v3/owners/{owner_id:str}", crm, methods=["GET"]),
        ]
    )
