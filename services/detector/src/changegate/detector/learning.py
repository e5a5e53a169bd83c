"""The reliability table, learnt as reviewers decide.

The lifecycle consumer records what every human decision said of its proposal's cells
(:func:`record`, in the transaction that closes the proposal). With
``CHANGEGATE_RELIABILITY_LEARN_SECONDS`` set, each replica then rebuilds its table that often: the
file's table (``CHANGEGATE_RELIABILITY_FILE``, or none) plus the decisions recorded after the
file's ``learned_at`` (those before it are what the file was learnt from), and uses it for the
proposals it makes next. Every replica reads the same rows, so they agree within one interval.
Each proposal names the table version its confidence came from (``confidence_basis``), and every
change of table is logged with its counts. Only human decisions are labels; auto-applied, expired
and superseded outcomes teach nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from datetime import datetime

import asyncpg
from changegate.core.contracts import Decision
from changegate.core.db import DbConn
from changegate.core.logging import get_logger
from changegate.detector import reliability
from changegate.detector.reliability import CellCounts, ReliabilityTable

log = get_logger(__name__)


async def record(conn: DbConn, decisions: Sequence[Decision]) -> int:
    """Keep the cells of each human decision (a redelivered one adds nothing); how many rows."""
    rows = [
        (d.decision_id, cell, held, d.decided_at)
        for d in decisions
        for cell, held in reliability.observations(d)
    ]
    if not rows:
        return 0
    await conn.execute(
        "INSERT INTO detector_reliability_observations (decision_id, cell, held, decided_at)"
        " SELECT * FROM unnest($1::uuid[], $2::text[], $3::boolean[], $4::timestamptz[])"
        " ON CONFLICT DO NOTHING",
        *map(list, zip(*rows, strict=True)),
    )
    return len(rows)


async def counts(
    conn: DbConn | asyncpg.Pool, after: datetime | None, until: datetime | None = None
) -> tuple[dict[str, CellCounts], int]:
    """Per cell, approved and corrected among the decisions made after ``after`` and up to
    ``until`` (None: no bound), and how many decisions that is."""
    where = (
        " FROM detector_reliability_observations WHERE ($1::timestamptz IS NULL OR decided_at > $1)"
        " AND ($2::timestamptz IS NULL OR decided_at <= $2)"
    )
    rows = await conn.fetch(
        "SELECT cell, count(*) FILTER (WHERE held) AS approved,"
        f" count(*) FILTER (WHERE NOT held) AS corrected{where} GROUP BY cell ORDER BY cell",
        after,
        until,
    )
    found = {r["cell"]: CellCounts(approved=r["approved"], corrected=r["corrected"]) for r in rows}
    decisions = await conn.fetchval(f"SELECT count(DISTINCT decision_id){where}", after, until) if rows else 0
    return found, int(decisions)


def combined(base: ReliabilityTable, learnt: dict[str, CellCounts], decisions: int) -> ReliabilityTable:
    """``base`` with ``learnt`` added cell by cell; its version says both."""
    if not learnt:
        return base
    cells = dict(base.cells)
    for key, more in learnt.items():
        had = cells.get(key, CellCounts())
        cells[key] = CellCounts(
            approved=had.approved + more.approved, corrected=had.corrected + more.corrected
        )
    observed = sum(c.decided for c in learnt.values())
    return base.model_copy(
        update={
            "version": f"{base.version}+{decisions}-decisions",
            "learned_from": f"{base.learned_from}; then {decisions} human decisions recorded by the"
            f" detector ({observed} cell observations)",
            "cells": dict(sorted(cells.items())),
        }
    )


class Learner:
    """Rebuilds the table every ``seconds`` and hands a changed one to ``use``."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        base: ReliabilityTable,
        use: Callable[[ReliabilityTable], None],
        seconds: float,
        stop: asyncio.Event,
    ) -> None:
        self.pool, self.use, self.seconds, self.stop = pool, use, seconds, stop
        self.current: ReliabilityTable = base
        # Without a file: the table `detector calibrate` would write from no decisions (its prior
        # weight, cap and level), then what reviewers decide.
        self.base = (
            ReliabilityTable(version="learnt", learned_from="no reliability file")
            if base is reliability.NO_TABLE
            else base
        )

    async def refresh(self) -> ReliabilityTable:
        learnt, decisions = await counts(self.pool, self.base.learned_at)
        table = combined(self.base, learnt, decisions)
        if (table.version, table.cells) != (self.current.version, self.current.cells):
            self.current = table
            self.use(table)
            log.info(
                "reliability table learnt", version=table.version, cells=len(table.cells), decisions=decisions
            )
        return self.current

    async def run(self) -> None:
        while not self.stop.is_set():
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError) as exc:  # the table in use stays; tried again
                log.warning("reliability table not refreshed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.seconds)
