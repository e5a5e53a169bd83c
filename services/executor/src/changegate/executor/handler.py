"""Executing decisions: exactly once, compare-and-set, against whichever CRM the adapter speaks to.

A polled batch of decisions is carried out together. Each is verified (signed by a service that may
make it; merges and owner changes decided by a human); the intents of the batch are recorded in the
ledger in one statement; field updates for different records share the CRM's batch calls (read,
compare, write, re-read), decisions that name one record run in turns, in their order; merges and
owner checks go one at a time. Then the decisions are marked done and their signed Executions —
and, for each conflict, the refreshed proposal for review — go to the outbox in one transaction."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from changegate.core import field_risk, outbox
from changegate.core.contracts import (
    Decider,
    Decision,
    Execution,
    ExecutionStatus,
    FieldChange,
    FieldWrite,
    ObjectType,
    Proposal,
    ProposalKind,
    ProposalSource,
    ReviewRequest,
)
from changegate.core.contracts.base import PropertyValue, utcnow
from changegate.core.contracts.envelope import Envelope, make_envelope
from changegate.core.errors import MessageRefusedError
from changegate.core.kafka import Refusals
from changegate.core.logging import get_logger
from changegate.core.policy_versions import RecordedPolicies
from changegate.core.signing import REPROPOSAL_PREFIX, SigningKey, Verifier
from changegate.core.topics import Topic, TopicNames
from changegate.executor import ledger
from changegate.executor.crm.breaker import Breaker
from changegate.executor.crm.port import (
    CrmAdapter,
    CrmRefusedError,
    OwnerStatus,
    RecordNotFoundError,
    WriteItem,
    WriteResult,
    WriteStatus,
)
from changegate.executor.crm.values import same
from prometheus_client import Counter, Histogram

SERVICE = "executor"
log = get_logger(__name__)
# Set by the CRM when records merge (read-only in HubSpot): reported, never written.
MERGE_BOOKKEEPING = frozenset({"hs_merged_object_ids"})
OWNER_FIELD = "hubspot_owner_id"

EXECUTIONS = Counter("changegate_executions_total", "Executions by status", ["status"])
SKIPPED = Counter(
    "changegate_executor_skipped_decisions_total", "Decisions that do not execute, by outcome", ["outcome"]
)
REFUSED = Counter(
    "changegate_executor_refused_decisions_total",
    "Decisions refused whatever their signature, by reason",
    ["reason"],
)
REDELIVERED = Counter(
    "changegate_executor_redelivered_total", "Decisions already executed: acknowledged without a second write"
)
DECISION_SECONDS = Histogram(
    "changegate_executor_decision_duration_seconds",
    "Time to carry out one decision in the CRM, every request and retry included",
    ["target"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5, 10),
)


def require_human(decision: Decision) -> None:
    """Defence in depth: whatever the policy said and whoever signed, a change the field-risk table
    gives to a human (an owner, an email, an erased value, a merge) executes on a human's approval
    only. MessageRefusedError (dead-lettered, counted) otherwise."""
    why = field_risk.table().human_reasons(decision.proposal.kind, decision.final_changes)
    if why and decision.decided_by.kind != "human":
        REFUSED.labels(reason="not_decided_by_a_human").inc()
        raise MessageRefusedError(
            "not_decided_by_a_human",
            f"{'; '.join(why)}: executes on a human's approval only, not a {decision.decided_by.kind}'s",
        )


@dataclass
class Outcome:
    status: ExecutionStatus
    writes: list[FieldWrite] = field(default_factory=list)
    current: dict[str, PropertyValue] = field(default_factory=dict)
    response_ids: list[str] = field(default_factory=list)
    error: str | None = None
    merged_into: str | None = None


class Executor:
    def __init__(
        self,
        pool: asyncpg.Pool,
        names: TopicNames,
        signer: SigningKey,
        verifier: Verifier,
        crm: CrmAdapter,
        breaker: Breaker,
    ) -> None:
        self.pool, self.names, self.signer, self.verifier = pool, names, signer, verifier
        self.crm, self.breaker = crm, breaker
        self.policies = RecordedPolicies(pool)

    async def handle(self, envelope: Envelope[Any]) -> None:
        """One decision (a batch of one); a refusal is raised."""
        refused = await self.handle_batch([envelope])
        if refused:
            raise refused[0]

    async def handle_batch(self, envelopes: list[Envelope[Any]]) -> Refusals:
        refused: dict[int, MessageRefusedError] = {}
        todo: list[tuple[int, Decision]] = []
        for n, envelope in enumerate(envelopes):
            try:
                if self._admit(envelope.payload):
                    await self.policies.check(envelope.payload)  # a version the policy service recorded
                    todo.append((n, envelope.payload))
            except MessageRefusedError as exc:
                refused[n] = exc
        for turn in _turns(todo):
            refused |= await self._execute_turn(turn)
        return refused

    def _admit(self, decision: Decision) -> bool:
        """Whether the decision executes; MessageRefusedError if it must never be acted on."""
        self.verifier.decision(decision)  # only what a trusted service may decide, signed by it
        if not decision.outcome.executes:
            SKIPPED.labels(outcome=decision.outcome.value).inc()
            return False  # nothing executes without an approving decision
        require_human(decision)
        return True

    async def _execute_turn(self, turn: list[tuple[int, Decision]]) -> dict[int, MessageRefusedError]:
        """Decisions for distinct records: intents, the CRM, then outcomes and executions."""
        async with self.pool.acquire() as conn:
            entries = await ledger.open_entries(conn, [d for _, d in turn], self.crm.target)
        fresh = [(n, d, entries[d.decision_id]) for n, d in turn if not entries[d.decision_id].done]
        if len(fresh) < len(turn):
            REDELIVERED.inc(len(turn) - len(fresh))
            log.info("decisions already executed", count=len(turn) - len(fresh))
        refused: dict[int, MessageRefusedError] = {}
        outcomes: dict[int, Outcome] = {}
        started = time.perf_counter()
        writes: list[tuple[int, Decision, ledger.Entry]] = []
        owners: dict[str, OwnerStatus] = {}
        for n, decision, entry in fresh:
            try:
                if decision.proposal.kind is ProposalKind.MERGE:
                    outcomes[n] = await self._merge(decision, entry)
                elif (blocked := await self._owner_blocked(decision, owners)) is not None:
                    outcomes[n] = blocked
                else:
                    writes.append((n, decision, entry))
            except RecordNotFoundError as exc:
                outcomes[n] = Outcome(ExecutionStatus.FAILED, error=str(exc))
            except CrmRefusedError as exc:
                refused[n] = MessageRefusedError("crm_refused", str(exc))
        for n, result in (await self._write_many(writes)).items():
            if isinstance(result, CrmRefusedError):
                refused[n] = MessageRefusedError("crm_refused", str(result))
            else:
                outcomes[n] = result
        # Each decision of the turn waited for the whole turn (its batch calls are shared).
        elapsed = time.perf_counter() - started
        for _ in fresh:
            DECISION_SECONDS.labels(target=self.crm.target).observe(elapsed)
        if outcomes:
            await self._finish({n: (d, entries[d.decision_id]) for n, d in turn if n in outcomes}, outcomes)
        return refused

    async def _owner_blocked(self, decision: Decision, known: dict[str, OwnerStatus]) -> Outcome | None:
        """A failed outcome when the decision assigns an owner who is not active (asked once per
        owner and batch)."""
        owner = next((c.proposed for c in decision.final_changes if c.field == OWNER_FIELD), None)
        if owner is None:
            return None
        if str(owner) not in known:
            known[str(owner)] = await self.breaker.call(lambda: self.crm.owner_status(str(owner)))
        status = known[str(owner)]
        if status is OwnerStatus.ACTIVE:
            return None
        return Outcome(ExecutionStatus.FAILED, error=f"owner {owner} is {status.value}: not assigned")

    async def _finish(
        self, done: dict[int, tuple[Decision, ledger.Entry]], outcomes: dict[int, Outcome]
    ) -> None:
        """Outcomes recorded, executions signed and emitted (and conflicts sent back to review), in
        one transaction; a decision another replica finished meanwhile emits nothing here."""
        statuses = {d.decision_id: outcomes[n].status.value for n, (d, _) in done.items()}
        async with self.pool.acquire() as conn, conn.transaction():
            finished = await ledger.finish(conn, statuses)
            messages: list[tuple[str, str | None, Envelope[Any]]] = []
            for n, (decision, entry) in done.items():
                if decision.decision_id not in finished:
                    continue
                outcome = outcomes[n]
                execution = Execution(
                    execution_id=Execution.make_id(decision.decision_id),
                    decision=decision,
                    status=outcome.status,
                    writes=outcome.writes,
                    crm_target=self.crm.target,
                    crm_response_ids=outcome.response_ids,
                    attempts=entry.attempts,
                    error=outcome.error,
                    merged_into=outcome.merged_into,
                    executed_at=utcnow(),
                )
                proposal = decision.proposal
                out = make_envelope(
                    self.signer.sign(execution),
                    service=SERVICE,
                    correlation_id=proposal.proposal_id,
                    dedup_key=str(execution.execution_id),
                )
                messages.append((self.names(Topic.EXECUTIONS), proposal.record_id, out))
                if outcome.status is ExecutionStatus.CONFLICT:
                    messages.extend(self._back_to_review(decision, outcome.current))
                EXECUTIONS.labels(status=outcome.status.value).inc()
            await outbox.enqueue_many(conn, SERVICE, messages)

    async def _write_many(
        self, items: list[tuple[int, Decision, ledger.Entry]]
    ) -> dict[int, Outcome | CrmRefusedError]:
        """Field updates, batched per object type through the adapter's batch write."""
        results: dict[int, Outcome | CrmRefusedError] = {}
        by_type: dict[ObjectType, list[tuple[int, Decision, ledger.Entry]]] = defaultdict(list)
        for item in items:
            by_type[item[1].proposal.object_type].append(item)
        for object_type, group in by_type.items():
            results |= await self._write_group(object_type, group)
        return results

    async def _write_group(
        self, object_type: ObjectType, group: list[tuple[int, Decision, ledger.Entry]]
    ) -> dict[int, Outcome | CrmRefusedError]:
        results: dict[int, Outcome | CrmRefusedError] = {}
        # An earlier attempt may have written: the CRM says whether it did, never a second write.
        resumed = [(n, d, e) for n, d, e in group if e.resumed]
        if resumed:
            results |= await self._settle_resumed(object_type, resumed)
        todo = [(n, d) for n, d, _ in group if n not in results]
        if not todo:
            return results

        async def observe(values: dict[int, dict[str, PropertyValue]]) -> None:
            async with self.pool.acquire() as conn:
                await ledger.observe(conn, {todo[i][1].decision_id: v for i, v in values.items()})

        items = [WriteItem(d.proposal.record_id, _writable(d.final_changes)) for _, d in todo]
        written = await self.breaker.call(lambda: self.crm.write_many(object_type, items, observe))
        for (n, _), result in zip(todo, written, strict=True):
            if isinstance(result, RecordNotFoundError):
                results[n] = Outcome(ExecutionStatus.FAILED, error=str(result))
            elif isinstance(result, CrmRefusedError):
                results[n] = result
            else:
                results[n] = _outcome(result)
        return results

    async def _settle_resumed(
        self, object_type: ObjectType, resumed: list[tuple[int, Decision, ledger.Entry]]
    ) -> dict[int, Outcome | CrmRefusedError]:
        """Resumed decisions whose changes the CRM already holds: applied by the attempt that died
        (or a no-op, if the CRM held them already before it). The others are written as usual."""
        fields = sorted({c.field for _, d, _ in resumed for c in _writable(d.final_changes)})
        ids = sorted({d.proposal.record_id for _, d, _ in resumed})
        states = await self.breaker.call(lambda: self.crm.read(object_type, ids, fields))
        results: dict[int, Outcome | CrmRefusedError] = {}
        for n, decision, entry in resumed:
            changes = _writable(decision.final_changes)
            state = states.get(decision.proposal.record_id)
            if state is None:
                results[n] = Outcome(
                    ExecutionStatus.FAILED, error=f"{object_type.value} {decision.proposal.record_id} is gone"
                )
                continue
            if all(same(c.field, state.properties.get(c.field), c.proposed) for c in changes):
                observed = entry.observed or {}
                held = all(same(c.field, observed.get(c.field), c.proposed) for c in changes)
                writes = [
                    FieldWrite(
                        field=c.field, expected=c.previous, overwritten=observed.get(c.field), new=c.proposed
                    )
                    for c in changes
                ]
                results[n] = Outcome(ExecutionStatus.NOOP if held else ExecutionStatus.APPLIED, writes)
        return results

    async def _write(self, decision: Decision, entry: ledger.Entry) -> Outcome:
        """The decision's own record alone (a merge's survivorship fills, on the survivor)."""
        result = (await self._write_group(decision.proposal.object_type, [(0, decision, entry)]))[0]
        if isinstance(result, CrmRefusedError):
            raise result
        return result

    async def _merge(self, decision: Decision, entry: ledger.Entry) -> Outcome:
        proposal = decision.proposal
        object_type, survivor, losers = proposal.object_type, proposal.record_id, proposal.other_record_ids
        if entry.resumed:
            states = await self.breaker.call(lambda: self.crm.read(object_type, [survivor, *losers], []))
            target = states.get(survivor)
            if target and all(states.get(x) and states[x].record_id == target.record_id != x for x in losers):
                return Outcome(
                    ExecutionStatus.APPLIED, self._merge_writes(decision, {}), merged_into=target.record_id
                )
        # The survivorship fills first (a compare-and-set on the survivor), then the merge itself.
        filled = await self._write(decision, entry)
        if filled.status is ExecutionStatus.CONFLICT:
            return filled
        if not filled.writes:
            async with self.pool.acquire() as conn:  # no fills: still, the CRM is about to change
                await ledger.observe(conn, {decision.decision_id: {}})
        merged = await self.breaker.call(lambda: self.crm.merge(object_type, survivor, losers))
        return Outcome(
            ExecutionStatus.APPLIED,
            self._merge_writes(decision, {w.field: w for w in filled.writes}),
            response_ids=filled.response_ids + merged.response_ids,
            merged_into=merged.merged_id,
        )

    @staticmethod
    def _merge_writes(decision: Decision, filled: dict[str, FieldWrite]) -> list[FieldWrite]:
        """What the audit log records of a merge: every fill, and the merged ids."""
        writes = []
        for c in decision.final_changes:
            write = filled.get(c.field)
            writes.append(
                write
                or FieldWrite(field=c.field, expected=c.previous, overwritten=c.previous, new=c.proposed)
            )
        return writes

    def _back_to_review(
        self, decision: Decision, current: dict[str, Any]
    ) -> list[tuple[str, str | None, Envelope[Any]]]:
        """A stale proposal never overwrites: re-propose it against the value the CRM holds now."""
        old = decision.proposal
        changes = [
            FieldChange(field=c.field, previous=current.get(c.field), proposed=c.proposed)
            for c in decision.final_changes
            if c.field in current and not same(c.field, current.get(c.field), c.proposed)
        ]
        if not changes:
            return []  # the CRM already holds what was proposed
        source_event = f"{REPROPOSAL_PREFIX}{decision.decision_id}"
        refreshed = Proposal(
            proposal_id=Proposal.make_id(old.source.detector, old.record_id, changes, source_event),
            kind=old.kind,
            object_type=old.object_type,
            record_id=old.record_id,
            other_record_ids=old.other_record_ids,
            changes=changes,
            source=ProposalSource(**{**old.source.model_dump(), "event_id": source_event}),
            confidence=old.confidence,
            rationale=_reproposal_rationale(old, changes),
            evidence={
                **old.evidence,
                "conflict": {"decision_id": str(decision.decision_id), "values_at_execution": current},
            },
            proposed_at=utcnow(),
            requested_by=old.requested_by,
        )
        refreshed = self.signer.sign(refreshed)  # review-api accepts the executor's re-proposals only
        request = ReviewRequest(
            proposal=refreshed,
            queue="conflicts",
            priority="high",
            routed_by=Decider(kind="system", identity=SERVICE, rule_id="compare-and-set-conflict"),
            explanation="sent back to review: the record changed after the proposal was approved",
        )
        out = make_envelope(
            self.signer.sign(request),
            service=SERVICE,
            correlation_id=refreshed.proposal_id,
            dedup_key=f"review|{refreshed.proposal_id}",
        )
        return [(self.names(Topic.PROPOSALS_PENDING), old.record_id, out)]


def _turns(decisions: list[tuple[int, Decision]]) -> list[list[tuple[int, Decision]]]:
    """Decisions in turns that each name a record once (a CRM batch may not name an id twice), a
    record's decisions in their order: the first of each record, then the second, and so on."""
    turns: list[list[tuple[int, Decision]]] = []
    seen: dict[str, int] = defaultdict(int)
    for n, decision in decisions:
        key = f"{decision.proposal.object_type.value}/{decision.proposal.record_id}"
        if seen[key] == len(turns):
            turns.append([])
        turns[seen[key]].append((n, decision))
        seen[key] += 1
    return turns


def _writable(changes: Sequence[FieldChange]) -> list[FieldChange]:
    return [c for c in changes if c.field not in MERGE_BOOKKEEPING]


def _outcome(result: WriteResult) -> Outcome:
    status = {
        WriteStatus.APPLIED: ExecutionStatus.APPLIED,
        WriteStatus.NOOP: ExecutionStatus.NOOP,
        WriteStatus.CONFLICT: ExecutionStatus.CONFLICT,
    }[result.status]
    error = f"changed since proposed: {', '.join(result.conflicts)}" if result.conflicts else result.note
    return Outcome(status, result.writes, result.current, result.response_ids, error)


def _reproposal_rationale(old: Proposal, changes: list[FieldChange]) -> str:
    """A re-proposal explains its own values: what the record holds now and what is still
    proposed, then why it was first proposed (whose values are no longer the record's)."""
    now = "; ".join(f"{c.field} now holds {c.previous!r}, still proposed {c.proposed!r}" for c in changes)
    return (
        f"re-proposed because the record changed after the first proposal was approved: {now}. "
        f"First proposed because: {old.rationale}"
    )[:10_000]
