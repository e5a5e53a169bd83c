"""The HTTP edge every service shares: RFC 9457 problem details for every error, request bodies
refused with 413 while they are read, and string types that keep NUL out of the database.

Every API answers bad input with a 4xx ``application/problem+json`` body that its OpenAPI document
declares; an unexpected failure is a 500 problem, logged with its traceback, never a stack trace."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Annotated, Any

import h11
from changegate.core.logging import get_logger
from changegate.core.tracing import TraceMiddleware
from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import Histogram
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
# Bounds for integers a client sends: PostgreSQL's bigint, and a page offset worth paging to.
MAX_BIGINT = 2**63 - 1
NO_NUL = r"^[^\x00]*$"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# Strings a client sends: bounded, and without NUL (PostgreSQL text cannot hold it).
Name = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=NO_NUL)]
Comment = Annotated[str, StringConstraints(max_length=2000, pattern=NO_NUL)]
Value = Annotated[str, StringConstraints(max_length=65_536, pattern=NO_NUL)]


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: body, query, path, header, then the field path")
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str = Field("about:blank", description="a URI identifying the problem type")
    title: str = Field(description="short summary of the problem type (the HTTP reason phrase)")
    status: int = Field(ge=400, le=599)
    detail: str | None = Field(None, description="what went wrong with this request")
    errors: list[FieldError] | None = Field(None, description="each invalid input (422 only)")


_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _problem_response(status: int) -> dict[str, Any]:
    return {"description": HTTPStatus(status).phrase, "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}}}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` declaring problem+json answers for ``statuses`` (route-specific ones;
    422, 413, 400 and 500 are declared on every operation they can happen on)."""
    return {status: _problem_response(status) for status in statuses}


def _not_null(parameter: dict[str, Any]) -> None:
    """An optional header is present or absent, never ``null``: its schema says so (FastAPI writes
    ``anyOf: [type, null]`` for ``str | None``, which a client would send as the text "null")."""
    schema = parameter.get("schema", {})
    options = schema.get("anyOf")
    if parameter.get("in") != "header" or not isinstance(options, list):
        return
    kept = [o for o in options if o.get("type") != "null"]
    if len(kept) == 1:
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        parameter["schema"] = {**kept[0], **rest}


def _document_problems(app: FastAPI) -> None:
    """Every error answer in the OpenAPI document is problem+json: the route's own (401, 404, …),
    422 wherever there is input, 400 and 413 wherever there is a body, 500 everywhere."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(problem_schema.pop("$defs", {}))
        components["Problem"] = problem_schema
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for parameter in operation.get("parameters", []):
                    _not_null(parameter)
                responses = operation.setdefault("responses", {})
                wanted = [500]
                if operation.get("parameters") or operation.get("requestBody"):
                    wanted.append(422)
                if operation.get("requestBody"):
                    wanted += [400, 413]
                for status in wanted:
                    responses[str(status)] = _problem_response(status)
                for status, response in responses.items():
                    if status[0] in "45":
                        response["content"] = {PROBLEM_JSON: {"schema": _PROBLEM_REF}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def problem(
    status: int, detail: str | None = None, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail, **extra)
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=status,
        headers=headers,
        media_type=PROBLEM_JSON,
    )


def _location(loc: tuple[Any, ...]) -> list[str | int]:
    return [part if isinstance(part, int) else str(part) for part in loc]


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    return problem(exc.status_code, detail, dict(exc.headers) if exc.headers else None)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        FieldError(
            loc=_location(tuple(e.get("loc", ()))), msg=str(e.get("msg", "")), type=str(e.get("type", ""))
        )
        for e in exc.errors()[:20]
    ]
    summary = "; ".join(f"{'.'.join(str(p) for p in e.loc)}: {e.msg}" for e in errors[:3])
    return problem(422, summary or "invalid request", errors=[e.model_dump() for e in errors])


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("request failed", path=request.url.path, method=request.method, exc_info=exc)
    return problem(500, "the server failed to handle this request; it is logged")


def _query_names(dependant: Dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def refuse_unknown_query(request: Request) -> None:
    """422 for a query parameter the operation does not declare."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = _query_names(route.dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise RequestValidationError(
            [
                {"loc": ("query", name), "msg": "unknown query parameter", "type": "extra_forbidden"}
                for name in unknown
            ]
        )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)


class BodyTooLargeError(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


class BodyLimitMiddleware:
    """Refuses a request body over ``max_bytes`` with 413: by its Content-Length before reading,
    and while reading a body sent without one (it is never read in full)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await problem(400, "Content-Length is not a number")(scope, receive, send)
                return
            if int(length) > self.max_bytes:
                await problem(413, str(BodyTooLargeError(self.max_bytes).detail))(scope, receive, send)
                return
        received = 0
        started = False

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException: FastAPI lets it through its body parsing to our handler.
                    raise BodyTooLargeError(self.max_bytes)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except BodyTooLargeError as exc:  # raised outside a route (no handler caught it)
            if started:
                raise
            await problem(413, str(exc.detail))(scope, receive, send)


HTTP_SECONDS = Histogram(
    "changegate_http_request_duration_seconds",
    "HTTP requests by route template (never the raw path), method and status",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)


class RequestMetricsMiddleware:
    """Times every request, labelled with the template of the route that answered it
    (``/v1/proposals/{proposal_id}``), or ``unmatched``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            HTTP_SECONDS.labels(template, scope["method"], str(status)).observe(time.perf_counter() - started)


def harden(app: FastAPI, max_body_bytes: int) -> FastAPI:
    """Problem details for every error, the body limit and request metrics, on any of our apps."""
    install_problem_handlers(app)
    _document_problems(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware)
    app.add_middleware(TraceMiddleware)  # outermost: the request's span covers everything
    return app


class ProblemH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, answering what its parser refuses before any app runs (a
    malformed request line, header or Content-Length, headers over the size limit) with a 400
    problem+json instead of plain text. Pass it as ``uvicorn.Config(http=...)``."""

    def send_400_response(self, msg: str) -> None:
        body = json.dumps(
            Problem(title=HTTPStatus(400).phrase, status=400, detail=msg).model_dump(exclude_none=True)
        ).encode()
        headers = [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        response = h11.Response(status_code=400, headers=headers, reason=HTTPStatus(400).phrase.encode())
        for event in (response, h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
