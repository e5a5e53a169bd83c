"""The execution ledger: exactly once against a CRM that shares no transaction with us.

``open`` commits the intent before the CRM is called; ``observe`` commits what the CRM held just
before the write; ``finish`` marks the decision done in the transaction that emits its execution.
A decision found done is acknowledged without a second write; one found at 'intent' had an unknown
outcome (the process died mid-way) and is resolved by reading the CRM first."""

from __future__ import annotations

import uuid
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


async def open_entry(conn: DbConn, decision: Decision, target: str) -> Entry:
    """Record the intent (or count another attempt at it); commit before calling the CRM."""
    row = await conn.fetchrow(
        "INSERT INTO executor_ledger (decision_id, execution_id, target, state) VALUES ($1, $2, $3, 'intent')"
        " ON CONFLICT (decision_id) DO UPDATE SET attempts = executor_ledger.attempts"
        " + CASE WHEN executor_ledger.state = 'intent' THEN 1 ELSE 0 END, updated_at = now()"
        " RETURNING state, attempts, observed",
        decision.decision_id,
        Execution.make_id(decision.decision_id),
        target,
    )
    assert row is not None
    observed: dict[str, Any] | None = row["observed"]
    return Entry(row["state"] == "done", row["attempts"], observed)


async def observe(conn: DbConn, decision_id: uuid.UUID, values: dict[str, PropertyValue]) -> None:
    """What the CRM held just before we write it (commit before the write)."""
    await conn.execute(
        "UPDATE executor_ledger SET observed = $2, updated_at = now() WHERE decision_id = $1",
        decision_id,
        values,
    )


async def finish(conn: DbConn, decision_id: uuid.UUID, status: str) -> bool:
    """Mark done; False if another replica finished it first (then it emitted the execution)."""
    done = await conn.fetchval(
        "UPDATE executor_ledger SET state = 'done', status = $2, updated_at = now()"
        " WHERE decision_id = $1 AND state = 'intent' RETURNING 1",
        decision_id,
        status,
    )
    return done is not None
