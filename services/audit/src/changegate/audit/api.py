"""The audit API, /v1: filtered keyset pages, a record's history, streaming exports, verification.

An unknown query parameter is refused (422) rather than ignored: a filter that is not applied would
return more than was asked for, and say nothing."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal

import asyncpg
from changegate.audit import checkpoints, query, revert
from changegate.audit.chain import HEAD_PATTERN, parse_head, row_to_entry
from changegate.core.auth import Reviewer, UnscopedViewer
from changegate.core.contracts import AuditCheckpoint, AuditEntry, AuditMode, Proposal
from changegate.core.contracts.crm_event import ObjectType
from changegate.core.http import MAX_BIGINT, Comment, Name, problem, problem_responses, refuse_unknown_query
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

router = APIRouter(
    prefix="/v1/audit",
    tags=["audit"],
    responses=problem_responses(401, 403, 422),
    dependencies=[Depends(refuse_unknown_query)],
)

# RFC 3339 with a time zone only: pydantic alone would also take a number as a Unix time.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339(value: object) -> object:
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError("expected an RFC 3339 time with a time zone, e.g. 2026-12-04T09:30:00Z")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]
AfterSeq = Annotated[int, Query(ge=0, le=MAX_BIGINT, description="keyset: only entries after this seq")]


def filters_of(
    record_id: Annotated[Name | None, Query(description="only this CRM record")] = None,
    object_type: Annotated[ObjectType | None, Query(description="only this CRM object type")] = None,
    field: Annotated[Name | None, Query(description="only this field (CRM property)")] = None,
    approver: Annotated[
        Name | None,
        Query(description="only outcomes decided by this principal (policy:<version> for policy)"),
    ] = None,
    mode: Annotated[
        list[AuditMode] | None, Query(description="only these outcomes (repeat the parameter for several)")
    ] = None,
    rule_id: Annotated[Name | None, Query(description="only outcomes decided under this policy rule")] = None,
    source_system: Annotated[Name | None, Query(description="only proposals from this source system")] = None,
    proposal_id: Annotated[uuid.UUID | None, Query(description="only this proposal")] = None,
    since: Annotated[
        Instant | None, Query(description="outcomes at or after this time (executed, else decided)")
    ] = None,
    until: Annotated[Instant | None, Query(description="outcomes before this time")] = None,
) -> query.Filters:
    return query.Filters(
        record_id=record_id,
        object_type=object_type.value if object_type else None,
        field=field,
        approver=approver,
        modes=tuple(dict.fromkeys(mode or [])),
        rule_id=rule_id,
        source_system=source_system,
        proposal_id=proposal_id,
        since=since,
        until=until,
    )


FiltersDep = Annotated[query.Filters, Depends(filters_of)]


class EntryPage(BaseModel):
    items: list[AuditEntry]
    next_after_seq: int | None = Field(description="pass as after_seq for the next page; null at the end")


async def _page(pool: asyncpg.Pool, filters: query.Filters, after_seq: int, limit: int) -> EntryPage:
    rows = await query.page(pool, filters, after_seq, limit + 1)
    more = len(rows) > limit
    items = [row_to_entry(r) for r in rows[:limit]]
    return EntryPage(items=items, next_after_seq=items[-1].seq if more else None)


@router.get("/entries", response_model=EntryPage, summary="Entries matching every filter, oldest first")
async def list_entries(
    request: Request,
    _: UnscopedViewer,
    filters: FiltersDep,
    after_seq: AfterSeq = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EntryPage:
    return await _page(request.app.state.pool, filters, after_seq, limit)


@router.get(
    "/records/{object_type}/{record_id}/history",
    response_model=EntryPage,
    summary="Every outcome about one record, oldest first",
)
async def record_history(
    request: Request,
    _: UnscopedViewer,
    object_type: ObjectType,
    record_id: Name,
    after_seq: AfterSeq = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> EntryPage:
    filters = query.Filters(record_id=record_id, object_type=object_type.value)
    return await _page(request.app.state.pool, filters, after_seq, limit)


@router.get(
    "/export",
    summary="Stream entries as JSONL (with the checkpoints within them) or CSV",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-ndjson": {}, "text/csv": {}},
            "description": "rows as the chain hashed them (docs/audit.md); check with docs/verify_audit.py",
        }
    },
)
async def export(
    request: Request,
    _: UnscopedViewer,
    filters: FiltersDep,
    format: Annotated[Literal["jsonl", "csv"], Query(description="jsonl (verifiable) or csv")] = "jsonl",
    after_seq: AfterSeq = 0,
    until_seq: Annotated[int | None, Query(ge=1, le=MAX_BIGINT, description="last seq to export")] = None,
) -> StreamingResponse:
    pool = request.app.state.pool
    if format == "csv":
        body = query.export_csv(pool, filters, after_seq, until_seq)
        media, name = "text/csv; charset=utf-8", "audit.csv"
    else:
        body = query.export_jsonl(pool, filters, after_seq, until_seq)
        media, name = "application/x-ndjson", "audit.jsonl"
    return StreamingResponse(
        body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


class ChainHead(BaseModel):
    seq: int
    hash: str


class ArchivedUpTo(BaseModel):
    month: str = Field(description="the last month archived (YYYY-MM); it and the months before are detached")
    last_seq: int = Field(description="its last row: verification from genesis starts after it")
    last_hash: str = Field(description="that row's hash, as archived; a signed checkpoint names it")
    file_sha256: str = Field(description="sha256 of the month's export (`changegate audit archive`)")


class VerifyResult(BaseModel):
    ok: bool = Field(description="no row altered or missing, every checkpoint matches (and the head given)")
    rows: int = Field(description="rows recomputed")
    from_seq: int = Field(description="rows recomputed from after this seq (0: from genesis)")
    checkpoints: int = Field(0, description="signed checkpoints checked against the rows they name")
    problems: list[str]
    head: ChainHead = Field(description="keep it outside this database; pass it back as head=SEQ:HASH")
    archived: ArchivedUpTo | None = Field(
        None, description="rows up to here are archived and detached: not recomputed here (their exports are)"
    )


async def verify_result(request: Request, head: str | None, from_genesis: bool) -> dict[str, Any]:
    """Every checkpoint, then the rows from genesis or from the latest checkpoint that passed; once
    months are archived, "genesis" is the last archived row (reported as ``archived``)."""
    checked = await checkpoints.verify_chain(
        request.app.state.pool, request.app.state.verifier, parse_head(head) if head else None, from_genesis
    )
    report, anchor = checked.rows, checked.archived
    archived = None
    if anchor is not None:
        archived = {
            "month": anchor.label,
            "last_seq": anchor.last_seq,
            "last_hash": anchor.last_hash,
            "file_sha256": anchor.file_sha256,
        }
    return {
        "archived": archived,
        "ok": checked.ok,
        "rows": report.rows,
        "from_seq": report.from_seq,
        "checkpoints": checked.marks.checked,
        "problems": checked.problems,
        "head": {"seq": report.head_seq, "hash": report.head_hash},
    }


HeadQuery = Annotated[
    str | None,
    Query(
        pattern=HEAD_PATTERN,
        description="SEQ:HASH of a head recorded earlier (catches rows cut from the end)",
    ),
]


@router.get("/verify", response_model=VerifyResult, summary="Verify the chain and its signed checkpoints")
async def verify_chain(
    request: Request,
    _: UnscopedViewer,
    head: HeadQuery = None,
    start: Annotated[
        Literal["checkpoint", "genesis"],
        Query(
            alias="from",
            description="checkpoint: rows after the latest signed checkpoint that matches (fast); "
            "genesis: every row",
        ),
    ] = "checkpoint",
) -> dict[str, Any]:
    return await verify_result(request, head, from_genesis=start == "genesis")


class CheckpointPage(BaseModel):
    items: list[AuditCheckpoint]
    next_after_seq: int | None


@router.get("/checkpoints", response_model=CheckpointPage, summary="Signed checkpoints, oldest first")
async def list_checkpoints(
    request: Request,
    _: UnscopedViewer,
    after_seq: AfterSeq = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> CheckpointPage:
    rows = await request.app.state.pool.fetch(
        "SELECT checkpoint FROM audit_checkpoints WHERE seq > $1 ORDER BY seq LIMIT $2", after_seq, limit + 1
    )
    items = [AuditCheckpoint.model_validate_json(r["checkpoint"]) for r in rows[:limit]]
    return CheckpointPage(items=items, next_after_seq=items[-1].seq if len(rows) > limit else None)


@router.get(
    "/checkpoints/latest",
    response_model=AuditCheckpoint,
    summary="The latest signed checkpoint",
    responses=problem_responses(404),
)
async def latest_checkpoint(request: Request, _: UnscopedViewer) -> AuditCheckpoint:
    checkpoint = await checkpoints.latest(request.app.state.pool)
    if checkpoint is None:
        raise HTTPException(404, "no checkpoint yet: the first is signed once rows arrive")
    return checkpoint


class RevertBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: Comment | None = Field(None, description="why: shown to the reviewer in the rationale")


class RevertAccepted(BaseModel):
    proposal_id: uuid.UUID = Field(description="the revert proposal, in review queue 'reverts'")
    queued: bool = Field(description="false: this entry's revert was asked for before (one per entry)")
    proposal: Proposal


@router.post(
    "/entries/{seq}/revert",
    status_code=202,
    response_model=RevertAccepted,
    summary="Propose to restore the value an applied entry overwrote (a human decides; never automatic)",
    responses=problem_responses(404, 409),
)
async def revert_entry(
    request: Request,
    principal: Reviewer,
    seq: Annotated[int, Path(ge=1, le=MAX_BIGINT)],
    body: RevertBody | None = None,
) -> Any:
    state = request.app.state
    try:
        result = await revert.revert(
            state.pool, state.names, state.signer, seq, principal.subject, body.comment if body else None
        )
    except revert.RevertRefusedError as exc:
        return problem(exc.status, exc.detail, **exc.extra)
    return RevertAccepted(
        proposal_id=result.proposal.proposal_id, queued=result.queued, proposal=result.proposal
    )
