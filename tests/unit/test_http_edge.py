"""The HTTP edge every service shares: problem details for every error, documented in the OpenAPI
document, and request bodies refused while they are read."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest
import uvicorn
from changegate.core.http import BodyLimitMiddleware, Comment, ProblemH11Protocol, harden, problem_responses
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

LIMIT = 1024


class Body(BaseModel):
    comment: Comment


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/items/{item_id}", responses=problem_responses(404))
    async def post(item_id: int, body: Body) -> dict[str, Any]:
        if item_id == 404:
            raise HTTPException(404, "no such item")
        if item_id == 500:
            raise RuntimeError("secret internals")
        return {"comment": body.comment}

    return harden(app, LIMIT)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def _is_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert isinstance(body["title"], str)
    return body


async def test_a_valid_request_passes(client: httpx.AsyncClient) -> None:
    response = await client.post("/items/1", json={"comment": "fine"})
    assert response.json() == {"comment": "fine"}


async def test_invalid_input_is_a_422_problem_listing_each_error(client: httpx.AsyncClient) -> None:
    body = _is_problem(await client.post("/items/x", json={"comment": "a\u0000b"}), 422)
    assert {tuple(e["loc"]) for e in body["errors"]} == {("path", "item_id"), ("body", "comment")}
    assert isinstance(body["detail"], str)
    assert "path.item_id" in body["detail"]


async def test_route_errors_and_unknown_routes_are_problems(client: httpx.AsyncClient) -> None:
    assert (
        _is_problem(await client.post("/items/404", json={"comment": "x"}), 404)["detail"] == "no such item"
    )
    _is_problem(await client.get("/nowhere"), 404)
    _is_problem(await client.get("/items/1"), 405)


async def test_an_unexpected_failure_is_a_500_problem_that_tells_nothing_inside(
    client: httpx.AsyncClient,
) -> None:
    body = _is_problem(await client.post("/items/500", json={"comment": "x"}), 500)
    assert "secret" not in str(body)


async def test_a_body_over_the_limit_by_its_length_is_refused_unread(client: httpx.AsyncClient) -> None:
    body = _is_problem(await client.post("/items/1", json={"comment": "x" * 2000}), 413)
    assert body["detail"] == "the request body is over the limit of 1024 bytes"


async def test_a_streamed_body_is_refused_as_soon_as_it_crosses_the_limit() -> None:
    received = 0
    chunks = [b'{"comment": "', *([b"x" * 300] * 1000), b'"}']  # 300 kB, sent without a length

    async def receive() -> dict[str, Any]:
        nonlocal received
        chunk = chunks[received]
        received += 1
        return {"type": "http.request", "body": chunk, "more_body": received < len(chunks)}

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/items/1",
        "raw_path": b"/items/1",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "scheme": "http",
        "server": ("test", 80),
        "root_path": "",
        "http_version": "1.1",
    }
    await _app()(scope, receive, send)
    assert sent[0]["status"] == 413
    assert received <= 5  # stopped reading right after the limit: 14 + 3 * 300 < 1024 < 14 + 4 * 300


async def test_a_content_length_that_is_not_a_number_is_a_400() -> None:
    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body must not be read")

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"12x")]}
    await BodyLimitMiddleware(_app(), LIMIT)(scope, receive, send)
    assert sent[0]["status"] == 400


def test_the_openapi_document_declares_every_error_as_a_problem() -> None:
    schema = _app().openapi()
    responses = schema["paths"]["/items/{item_id}"]["post"]["responses"]
    assert sorted(responses) == ["200", "400", "404", "413", "422", "500"]
    for status, response in responses.items():
        if status != "200":
            assert list(response["content"]) == ["application/problem+json"], status
            assert response["content"]["application/problem+json"]["schema"] == {
                "$ref": "#/components/schemas/Problem"
            }
    components = schema["components"]["schemas"]
    assert "Problem" in components
    assert "FieldError" in components
    assert "HTTPValidationError" not in components


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n{}",  # malformed length
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",  # no colon
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000,  # headers over the limit, unfinished
    ],
    ids=["content-length", "two-lengths", "header", "request-line", "headers-too-large"],
)
async def test_what_the_http_server_refuses_before_the_app_is_a_problem_too(request_bytes: bytes) -> None:
    """uvicorn's parser answers these itself, before any app or middleware runs."""
    config = uvicorn.Config(_app(), log_config=None, lifespan="off", http=ProblemH11Protocol)
    server = uvicorn.Server(config)
    # A listening socket of our own: connections queue in its backlog until the server accepts.
    sock = socket.create_server(("127.0.0.1", 0))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        reader, writer = await asyncio.open_connection(sock=socket.create_connection(sock.getsockname()))
        writer.write(request_bytes)
        await writer.drain()
        raw = await reader.read()  # the server closes the connection after its answer
        writer.close()
    finally:
        server.should_exit = True
        await task
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body) == {
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": "Invalid HTTP request received.",
    }
