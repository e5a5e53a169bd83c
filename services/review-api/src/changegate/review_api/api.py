"""The review API, ``/v1``: list, read, decide (alone or in bulk), statistics and a live stream.

Every error is problem+json; an unknown query parameter is refused (422) rather than ignored, so a
typo in a filter never widens a bulk action. Items carry a version: ``ETag`` on reads,
``If-Match`` on decisions (412 when it moved on); a decision that lost a race gets 409 with the
item as it is now. ``Idempotency-Key`` makes a retried POST return its first answer."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Annotated, Any, Literal

import asyncpg
from changegate.core.auth import Admin, Principal, Reviewer, Role, Viewer
from changegate.core.auth.dependencies import AUTH_FAILURES
from changegate.core.contracts import FieldChange, Proposal, ProposalKind
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.crm_event import ObjectType
from changegate.core.http import (
    PROBLEM_JSON,
    Comment,
    Name,
    Problem,
    Value,
    problem_responses,
    refuse_unknown_query,
)
from changegate.review_api import events, idempotency, metrics, store, views
from changegate.review_api.decisions import Action, ActionRefusedError, ItemMissingError, Outcome, act
from changegate.review_api.queue import merge_modifications
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

ListStatus = Literal[
    "pending",
    "approved",
    "approved_with_changes",
    "rejected",
    "expired",
    "superseded",
    "auto_approved",
    "any",
]
AGE_PATTERN = r"^\d{1,6}[smhd]$"
MAX_BULK = 1000


router = APIRouter(
    prefix="/v1",
    tags=["review"],
    responses=problem_responses(401, 403, 422),
    dependencies=[Depends(refuse_unknown_query)],
)

IfMatch = Annotated[
    str | None,
    Header(
        pattern=r'^(\*|"?[0-9]{1,9}"?)$',
        description='the ETag of the item as you saw it ("7"; the quotes may be left out): refused with '
        "412 if the item changed since",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="a key of yours (e.g. a UUID): a retry with the same key returns the first answer",
    ),
]


def etag(version: int) -> str:
    return f'"{version}"'


def _json(
    model: BaseModel | dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = model.model_dump_json() if isinstance(model, BaseModel) else json.dumps(model, default=str)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


# -- reading ---------------------------------------------------------------------------------------


async def filters_of(
    status: Annotated[ListStatus, Query(description="status of the items ('any': every status)")] = "pending",
    kind: Annotated[ProposalKind | None, Query(description="only this proposal kind")] = None,
    queue: Annotated[Name | None, Query(description="only this review queue")] = None,
    source_system: Annotated[Name | None, Query(description="only proposals from this source system")] = None,
    object_type: Annotated[ObjectType | None, Query(description="only this CRM object type")] = None,
    record_id: Annotated[Name | None, Query(description="only proposals changing this record")] = None,
    min_confidence: Annotated[float | None, Query(ge=0, le=1, description="confidence at least this")] = None,
    max_confidence: Annotated[float | None, Query(ge=0, le=1, description="confidence at most this")] = None,
    min_age: Annotated[
        str | None, Query(pattern=AGE_PATTERN, description="queued at least this long ago: 90s, 30m, 12h, 7d")
    ] = None,
    max_age: Annotated[
        str | None, Query(pattern=AGE_PATTERN, description="queued at most this long ago")
    ] = None,
    rule: Annotated[
        Name | None, Query(description="only items routed or decided by this policy rule")
    ] = None,
) -> store.Filters:
    return store.Filters(
        status=None if status == "any" else status,
        kind=kind.value if kind else None,
        queue=queue,
        source_system=source_system,
        object_type=object_type.value if object_type else None,
        record_id=record_id,
        min_confidence=min_confidence,
        max_confidence=max_confidence,
        min_age=store.parse_age(min_age) if min_age else None,
        max_age=store.parse_age(max_age) if max_age else None,
        rule=rule,
    )


FiltersDep = Annotated[store.Filters, Depends(filters_of)]


@router.get(
    "/proposals",
    response_model=views.Page,
    summary="List proposals: highest priority first, then oldest (keyset pages)",
    operation_id="list_proposals",
)
async def list_proposals(
    request: Request,
    principal: Viewer,
    filters: FiltersDep,
    limit: Annotated[int, Query(ge=1, le=200, description="items per page")] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=400, pattern=r"^[A-Za-z0-9_-]+$", description="next_cursor of the page before"),
    ] = None,
) -> Response:
    try:
        page = await store.page_json(request.app.state.pool, filters, principal, limit, cursor)
    except store.CursorError as exc:
        raise HTTPException(422, f"cursor: {exc}") from exc
    return Response(page, media_type="application/json")


async def _detail(pool: asyncpg.Pool, proposal_id: uuid.UUID, principal: Principal) -> views.Detail:
    async with pool.acquire() as conn:  # one connection for the three reads (a pool release costs a query)
        row = await store.item(conn, proposal_id, principal)
        if row is None:
            raise HTTPException(404, f"no proposal {proposal_id}")
        history = await store.history(conn, proposal_id)
        seen = await store.latest_values(conn, row["object_type"], row["record_id"])
    return views.detail(row, history, seen)


@router.get(
    "/proposals/{proposal_id}",
    response_model=views.Detail,
    summary="One proposal, whatever its route: changes with current values, rationale, evidence, history",
    responses=problem_responses(404),
    operation_id="get_proposal",
)
async def get_proposal(request: Request, principal: Viewer, proposal_id: uuid.UUID) -> Response:
    detail = await _detail(request.app.state.pool, proposal_id, principal)
    return _json(detail, headers={"ETag": etag(detail.version)})


class QueueStats(BaseModel):
    kind: str
    queue: str | None
    depth: int = Field(description="items waiting")
    oldest_age_seconds: float
    partly_approved: int = Field(description="items with some approvals, waiting for more (four-eyes)")
    expiring_within_a_day: int


class Stats(BaseModel):
    queues: list[QueueStats]
    total: int


@router.get(
    "/stats",
    response_model=Stats,
    summary="Queue depth and oldest age by kind and queue",
    operation_id="stats",
)
async def stats(request: Request, principal: Viewer) -> Response:
    rows = await store.statistics(request.app.state.pool, principal)
    now = utcnow()
    queues = [
        QueueStats(
            kind=r["kind"],
            queue=r["queue"],
            depth=r["depth"],
            oldest_age_seconds=max(0.0, (now - r["oldest"]).total_seconds()),
            partly_approved=r["partly_approved"],
            expiring_within_a_day=r["expiring_within_a_day"],
        )
        for r in rows
    ]
    return _json(Stats(queues=queues, total=sum(q.depth for q in queues)))


@router.get(
    "/events",
    summary="Server-Sent Events of queue changes: enqueued, approval, decided, executed, conflicted, …",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
    operation_id="events",
)
async def event_stream(
    request: Request,
    principal: Viewer,
    kind: Annotated[ProposalKind | None, Query(description="only this kind")] = None,
    queue: Annotated[Name | None, Query(description="only this queue")] = None,
    proposal_id: Annotated[uuid.UUID | None, Query(description="only this proposal")] = None,
    last_event_id: Annotated[
        int | None, Header(ge=0, le=2**62, description="resume after this event id (sent by EventSource)")
    ] = None,
) -> StreamingResponse:
    subscriber = events.Subscriber(principal, proposal_id, kind.value if kind else None, queue)
    return StreamingResponse(
        events.stream(request.app.state.hub, request.app.state.pool, subscriber, last_event_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


# -- deciding --------------------------------------------------------------------------------------


class ApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: Comment | None = None


class RejectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[Comment, Field(min_length=1, description="why: required, kept in the decision")]


class ApproveWithChangesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    changes: dict[Name, Value | int | float | bool | None] = Field(
        min_length=1,
        max_length=100,
        description="field -> the value to apply instead of the proposed one (of the proposed value's type)",
    )
    comment: Comment | None = None


class DecisionResult(BaseModel):
    proposal_id: uuid.UUID
    decided: bool = Field(
        description="false: your approval is recorded and more distinct approvers are required"
    )
    outcome: str = Field(description="the decision's outcome, or 'pending' after a partial approval")
    decision_id: uuid.UUID | None
    approvals: views.ApprovalCount
    item: views.ItemSummary


def decision_answer(outcome: Outcome) -> idempotency.Answer:
    row = outcome.row
    result = DecisionResult(
        proposal_id=row["proposal_id"],
        decided=outcome.decision is not None,
        outcome=outcome.decision.outcome.value if outcome.decision else "pending",
        decision_id=outcome.decision.decision_id if outcome.decision else None,
        approvals=views.ApprovalCount(given=outcome.approvals, required=outcome.required),
        item=views.ItemSummary.model_validate(views.summary(row)),
    )
    return idempotency.Answer(200, result.model_dump_json().encode(), {"ETag": etag(row["version"])})


def _refusal(exc: ActionRefusedError) -> idempotency.Answer:
    if exc.reason == "own":
        AUTH_FAILURES.labels(reason="self_approval").inc()
    status = {"version": 412, "own": 403, "already_approved": 409, "decided": 409, "expired": 409}[exc.reason]
    current = views.ItemSummary.model_validate(views.summary(exc.row)).model_dump(mode="json")
    body = Problem(title=_phrase(status), status=status, detail=str(exc), reason=exc.reason, current=current)
    return idempotency.Answer(
        status, body.model_dump_json(exclude_none=True).encode(), {"ETag": etag(exc.row["version"])}
    )


def _phrase(status: int) -> str:
    return HTTPStatus(status).phrase


def _answer(answer: idempotency.Answer, replayed: bool = False) -> Response:
    media = "application/json" if answer.status < 400 else PROBLEM_JSON
    headers = dict(answer.headers) | ({"Idempotent-Replayed": "true"} if replayed else {})
    return Response(answer.body, status_code=answer.status, media_type=media, headers=headers)


async def idempotent(
    request: Request,
    principal: Principal,
    key: str | None,
    run: Callable[[idempotency.OnAnswer | None], Awaitable[idempotency.Answer]],
) -> Response:
    """Run a POST once per Idempotency-Key: the first answer is stored (with the decision, in its
    transaction) and returned again to every retry."""
    if key is None:
        return _answer(await run(None))
    pool = request.app.state.pool
    digest = idempotency.request_hash(request.method, request.url.path, await request.body())
    stored = await idempotency.claim(pool, principal.subject, key, digest)
    if stored is not None:
        return _answer(stored, replayed=True)

    kept = False

    async def keep(conn: Any, answer: idempotency.Answer) -> None:
        nonlocal kept
        await idempotency.store(conn, principal.subject, key, answer)
        kept = True

    try:
        answer = await run(keep)
    except HTTPException as exc:
        if exc.status_code == 429 or exc.status_code >= 500:
            await idempotency.release(pool, principal.subject, key)
            raise
        detail = exc.detail if isinstance(exc.detail, str) else None
        body = Problem(title=_phrase(exc.status_code), status=exc.status_code, detail=detail)
        answer = idempotency.Answer(
            exc.status_code, body.model_dump_json(exclude_none=True).encode(), dict(exc.headers or {})
        )
        await idempotency.store(pool, principal.subject, key, answer)
        return _answer(answer)
    except BaseException:
        await idempotency.release(pool, principal.subject, key)
        raise
    if not kept:  # refusals (the decision rolled back) and answers without a transaction of their own
        await idempotency.store(pool, principal.subject, key, answer)
    return _answer(answer)


def parse_if_match(value: str | None) -> int | None:
    return None if value is None or value == "*" else int(value.strip('"'))


async def decide(
    request: Request,
    principal: Principal,
    proposal_id: uuid.UUID,
    action: Action,
    comment: str | None,
    modified: dict[str, Any] | None,
    if_match: int | None,
    keep: idempotency.OnAnswer | None,
) -> idempotency.Answer:
    """One reviewer's action on one item, with every check; the answer to send."""
    state = request.app.state

    def admit(row: asyncpg.Record) -> list[FieldChange] | None:
        # Checked on the row the decision locks (one read less than checking before).
        if not store.may_read(principal, row["queue"], row["kind"]):
            AUTH_FAILURES.labels(reason="out_of_scope").inc()
            raise HTTPException(404, f"no proposal {proposal_id}")
        if not principal.may(Role.REVIEWER, queue=row["queue"], kind=row["kind"]):
            AUTH_FAILURES.labels(reason="out_of_scope").inc()
            raise HTTPException(
                403, f"your role does not cover {row['kind']} proposals in queue {row['queue']}"
            )
        if modified is None:
            return None
        try:
            return merge_modifications(Proposal.model_validate(row["proposal"]), modified)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc

    async def before_commit(conn: Any, outcome: Outcome) -> None:
        if keep is not None:
            await keep(conn, decision_answer(outcome))

    try:
        outcome = await act(
            state.pool,
            state.names,
            proposal_id,
            action,
            principal.subject,
            comment,
            signer=state.signer,
            min_approvals=state.settings.review_min_approvals,
            if_match=if_match,
            before_commit=before_commit,
            admit=admit,
        )
    except ItemMissingError as exc:
        raise HTTPException(404, f"no proposal {proposal_id}") from exc
    except ActionRefusedError as exc:
        return _refusal(exc)
    return decision_answer(outcome)


DECISION_ERRORS = problem_responses(404, 409, 412, 429)


def _decision_route(path: str, summary: str, operation_id: str) -> Callable[[Any], Any]:
    return router.post(
        path,
        response_model=DecisionResult,
        summary=summary,
        responses=DECISION_ERRORS,
        operation_id=operation_id,
    )


async def decide_once(
    request: Request,
    principal: Principal,
    proposal_id: uuid.UUID,
    action: Action,
    comment: str | None,
    if_match: str | None,
    idempotency_key: str | None,
    modified: dict[str, Any] | None = None,
) -> Response:
    """A decision route's body: the rate limit, then ``decide`` once per Idempotency-Key."""
    await request.app.state.decision_limit.check(principal.subject)
    version = parse_if_match(if_match)
    return await idempotent(
        request,
        principal,
        idempotency_key,
        lambda keep: decide(request, principal, proposal_id, action, comment, modified, version, keep),
    )


@_decision_route(
    "/proposals/{proposal_id}/approve", "Approve as proposed (one of N approvals under four-eyes)", "approve"
)
async def approve(
    request: Request,
    principal: Reviewer,
    proposal_id: uuid.UUID,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
    body: ApproveBody | None = None,
) -> Response:
    comment = body.comment if body else None
    return await decide_once(
        request, principal, proposal_id, Action.APPROVE, comment, if_match, idempotency_key
    )


@_decision_route(
    "/proposals/{proposal_id}/reject", "Reject, with a reason (ends it, whatever approvals it had)", "reject"
)
async def reject(
    request: Request,
    principal: Reviewer,
    proposal_id: uuid.UUID,
    body: RejectBody,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await decide_once(
        request, principal, proposal_id, Action.REJECT, body.reason, if_match, idempotency_key
    )


@_decision_route(
    "/proposals/{proposal_id}/approve-with-changes",
    "Approve with edited values (recorded as a modification: original and final values)",
    "approve_with_changes",
)
async def approve_with_changes(
    request: Request,
    principal: Reviewer,
    proposal_id: uuid.UUID,
    body: ApproveWithChangesBody,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await decide_once(
        request,
        principal,
        proposal_id,
        Action.APPROVE,
        body.comment,
        if_match,
        idempotency_key,
        dict(body.changes),
    )


# -- bulk ------------------------------------------------------------------------------------------


class BulkFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: ProposalKind | None = None
    queue: Name | None = None
    source_system: Name | None = None
    object_type: ObjectType | None = None
    record_id: Name | None = None
    min_confidence: float | None = Field(None, ge=0, le=1)
    max_confidence: float | None = Field(None, ge=0, le=1)
    min_age: Annotated[str, Field(pattern=AGE_PATTERN)] | None = None
    max_age: Annotated[str, Field(pattern=AGE_PATTERN)] | None = None
    rule: Name | None = None

    def filters(self) -> store.Filters:
        return store.Filters(
            status="pending",
            kind=self.kind.value if self.kind else None,
            queue=self.queue,
            source_system=self.source_system,
            object_type=self.object_type.value if self.object_type else None,
            record_id=self.record_id,
            min_confidence=self.min_confidence,
            max_confidence=self.max_confidence,
            min_age=store.parse_age(self.min_age) if self.min_age else None,
            max_age=store.parse_age(self.max_age) if self.max_age else None,
            rule=self.rule,
        )


class BulkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["approve", "reject"]
    ids: list[uuid.UUID] | None = Field(None, min_length=1, max_length=MAX_BULK, description="these items")
    filter: BulkFilter | None = Field(None, description="or: the pending items this filter matches")
    reason: Comment | None = Field(None, description="required to reject")
    comment: Comment | None = None
    dry_run: bool = Field(False, description="only count what would be decided; change nothing")
    max_items: int = Field(
        100, ge=1, le=MAX_BULK, description="the cap: at most this many items are decided in one call"
    )


class BulkSkip(BaseModel):
    proposal_id: uuid.UUID
    reason: str = Field(
        description="decided (with its status), own, already_approved, expired, out_of_scope, missing"
    )
    status: str | None


class BulkDone(BaseModel):
    proposal_id: uuid.UUID
    outcome: str = Field(description="the decision's outcome, or 'pending' after a partial approval")


class BulkResult(BaseModel):
    dry_run: bool
    matched: int = Field(description="pending items the ids or filter match (within your scopes)")
    capped: bool = Field(description="more matched than max_items: run again for the rest")
    would_decide: int = Field(description="dry run: items this call would act on")
    done: list[BulkDone]
    skipped: list[BulkSkip]


@router.post(
    "/bulk",
    response_model=BulkResult,
    summary="Approve or reject many items, by ids or by filter (admin; dry run, cap, skips reported)",
    responses=problem_responses(409, 429),
    operation_id="bulk",
)
async def bulk(
    request: Request, principal: Admin, body: BulkBody, idempotency_key: IdempotencyKey = None
) -> Response:
    if (body.ids is None) == (body.filter is None):
        raise HTTPException(422, "give either ids or a filter")
    if body.action == "reject" and not body.reason:
        raise HTTPException(422, "a rejection needs a reason")
    await request.app.state.decision_limit.check(principal.subject)
    return await idempotent(
        request, principal, idempotency_key, lambda _keep: run_bulk(request, principal, body)
    )


async def run_bulk(request: Request, principal: Principal, body: BulkBody) -> idempotency.Answer:
    state = request.app.state
    pool: asyncpg.Pool = state.pool
    skipped: list[BulkSkip] = []
    if body.ids is not None:
        wanted = list(dict.fromkeys(body.ids))
        known = {
            r["proposal_id"]: r
            for r in await pool.fetch(
                "SELECT proposal_id, status, queue, kind FROM review_queue"
                " WHERE proposal_id = ANY($1::uuid[])",
                wanted,
            )
        }
        targets = []
        for pid in wanted:
            row = known.get(pid)
            if row is None or not store.may_read(principal, row["queue"], row["kind"]):
                skipped.append(BulkSkip(proposal_id=pid, reason="missing", status=None))
            elif row["status"] != "pending":
                skipped.append(BulkSkip(proposal_id=pid, reason="decided", status=row["status"]))
            elif not principal.may(Role.ADMIN, queue=row["queue"], kind=row["kind"]):
                skipped.append(BulkSkip(proposal_id=pid, reason="out_of_scope", status=row["status"]))
            else:
                targets.append(pid)
        matched = len(targets)
    else:
        assert body.filter is not None
        filters = body.filter.filters()
        matched = await store.count(pool, filters, principal)
        rows, _ = await store.page(pool, filters, principal, body.max_items, None)
        targets = [r["proposal_id"] for r in rows]
    capped = len(targets) > body.max_items
    targets = targets[: body.max_items]
    if body.filter is not None:
        capped = matched > len(targets)
    done: list[BulkDone] = []
    if not body.dry_run:
        action = Action.APPROVE if body.action == "approve" else Action.REJECT
        comment = body.reason if action is Action.REJECT else body.comment
        for pid in targets:
            try:
                outcome = await act(
                    pool,
                    state.names,
                    pid,
                    action,
                    principal.subject,
                    comment,
                    signer=state.signer,
                    min_approvals=state.settings.review_min_approvals,
                )
            except ItemMissingError:
                skipped.append(BulkSkip(proposal_id=pid, reason="missing", status=None))
                continue
            except ActionRefusedError as exc:
                skipped.append(BulkSkip(proposal_id=pid, reason=exc.reason, status=exc.row["status"]))
                continue
            done.append(
                BulkDone(
                    proposal_id=pid, outcome=outcome.decision.outcome.value if outcome.decision else "pending"
                )
            )
    for item in done:
        metrics.BULK_ITEMS.labels(
            action=body.action, result="decided" if item.outcome != "pending" else "approval"
        ).inc()
    for skip in skipped:
        metrics.BULK_ITEMS.labels(action=body.action, result=f"skipped_{skip.reason}").inc()
    result = BulkResult(
        dry_run=body.dry_run,
        matched=matched,
        capped=capped,
        would_decide=len(targets),
        done=done,
        skipped=skipped,
    )
    return idempotency.Answer(200, result.model_dump_json().encode(), {})
