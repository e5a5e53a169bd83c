"""The outbox relay is woken in-process when a consumer batch of its service wrote to the outbox
(the NOTIFY round trip is the fallback); a batch that wrote nothing costs it nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from changegate.core import outbox
from changegate.core.contracts import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.envelope import make_envelope


class _Conn:
    """Takes statements and answers nothing: enqueueing only needs its execute."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    async def execute(self, query: str, *args: Any) -> str:
        self.statements.append(query)
        return ""


def _relay(service: str) -> outbox.OutboxRelay:
    return outbox.OutboxRelay(None, None, service, asyncio.Event())  # type: ignore[arg-type]


def _envelope() -> Any:
    event = CrmEvent(
        source_system="hubspot",
        source_event_id="e1",
        object_type=ObjectType.CONTACT,
        record_id="r1",
        kind=CrmEventKind.RECORD_CREATED,
        properties={"firstname": "Ada"},
    )
    return make_envelope(event, service="t")


async def test_a_batch_that_wrote_to_its_outbox_wakes_the_relay_once() -> None:
    relay, other = _relay("svc-a"), _relay("svc-b")
    relay.nudge()
    assert not relay._wake.is_set()  # nothing written: no look at the table
    await outbox.enqueue_many(_Conn(), "svc-a", [("topic", "r1", _envelope())])  # type: ignore[arg-type]
    other.nudge()
    assert not other._wake.is_set()  # another service's outbox
    relay.nudge()
    assert relay._wake.is_set()
    relay._wake.clear()
    relay.nudge()
    assert not relay._wake.is_set()  # woken once per write, not per batch after it


async def test_enqueueing_one_message_counts_as_a_write_too() -> None:
    relay = _relay("svc-c")
    conn = _Conn()
    await outbox.enqueue(conn, "svc-c", "topic", "r1", _envelope())  # type: ignore[arg-type]
    assert any("pg_notify" in q for q in conn.statements)  # NOTIFY stays: other replicas' relays
    relay.nudge()
    assert relay._wake.is_set()
