"""The execution ledger: exactly once against a CRM that shares no transaction with us.

``open_entries`` commits the intent before the CRM is called; ``observe`` commits what the CRM held
just before the write; ``finish`` marks decisions done in the transaction that emits their
executions. A decision found done is acknowledged without a second write; one found at 'intent' had
an unknown outcome (the process died mid-way) and is resolved by reading the CRM first. Each call
takes a batch of decisions in one statement."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from changegate.core.contracts import Decision, Execution
from changegate.core.contracts.base import PropertyValue
from changegate.core.db import DbConn


@dataclass(frozen=True)
class Entry:
    done: bool
    attempts: int
    observed: dict[str, PropertyValue] | None  # None: the CRM was not about to be written yet

    @property
    def resumed(self) -> bool:
        """An earlier attempt got as far as reading the CRM: its write may have landed."""
        return self.observed is not None


async def open_entries(conn: DbConn, decisions: Sequence[Decision], target: str) -> dict[uuid.UUID, Entry]:
    """Record the intents (or count another attempt at each); commit before calling the CRM.
    ``decisions`` must not name one decision twice."""
    rows = await conn.fetch(
        "INSERT INTO executor_ledger (decision_id, execution_id, target, state)"
        " SELECT d, e, $3, 'intent' FROM unnest($1::uuid[], $2::uuid[]) AS t(d, e)"
        " ON CONFLICT (decision_id) DO UPDATE SET attempts = executor_ledger.attempts"
        " + CASE WHEN executor_ledger.state = 'intent' THEN 1 ELSE 0 END, updated_at = now()"
        " RETURNING decision_id, state, attempts, observed",
        [d.decision_id for d in decisions],
        [Execution.make_id(d.decision_id) for d in decisions],
        target,
    )
    entries = {}
    for row in rows:
        observed: dict[str, Any] | None = row["observed"]
        entries[row["decision_id"]] = Entry(row["state"] == "done", row["attempts"], observed)
    return entries


async def open_entry(conn: DbConn, decision: Decision, target: str) -> Entry:
    return (await open_entries(conn, [decision], target))[decision.decision_id]


async def observe(conn: DbConn, values: Mapping[uuid.UUID, dict[str, PropertyValue]]) -> None:
    """What the CRM held just before we write it, per decision (commit before the write)."""
    await conn.execute(
        "UPDATE executor_ledger AS l SET observed = v.observed, updated_at = now()"
        " FROM unnest($1::uuid[], $2::jsonb[]) AS v(decision_id, observed)"
        " WHERE l.decision_id = v.decision_id",
        list(values),
        list(values.values()),
    )


async def finish(conn: DbConn, statuses: Mapping[uuid.UUID, str]) -> set[uuid.UUID]:
    """Mark decisions done with their status; the ones another replica finished first (it emitted
    their executions) are not in the answer."""
    rows = await conn.fetch(
        "UPDATE executor_ledger AS l SET state = 'done', status = v.status, updated_at = now()"
        " FROM unnest($1::uuid[], $2::text[]) AS v(decision_id, status)"
        " WHERE l.decision_id = v.decision_id AND l.state = 'intent' RETURNING l.decision_id",
        list(statuses),
        list(statuses.values()),
    )
    return {r["decision_id"] for r in rows}
