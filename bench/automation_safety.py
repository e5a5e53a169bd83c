"""Automation safety: is what the shipped policy auto-applies right, how much review work does it
save, and does each detector's confidence mean what it says?

A labelled stream of the five scenarios (``labelled_stream.py``: sources of hidden reliability,
verifier results, lifecycle triggers, territory changes, duplicates with look-alikes) runs through
the real detector and policy services, each its own process on the embedded broker and PostgreSQL
(started and stopped here; the executor is not needed: a route is what the policy decided).

1. **Tuning part**: the detector runs without a reliability table (every confidence its prior).
   Each proposal is decided as a reviewer who knows the truth would: approved unchanged if right,
   else corrected. ``reliability.learn`` turns those decisions into a reliability table — the
   production path of ``changegate detector calibrate``. The thresholds the tuning part supports
   (the lowest confidence above every wrong low-risk proposal of its shape, with the table) are
   printed: this is where the shipped policy's thresholds were chosen. Then the *level* of the
   evidence floor (the lower credible bound each proposal states, which the policy's
   ``min_confidence_bound`` gates on) is checked out of sample on the tuning part alone: its
   records are split in two folds, a table learnt from one fold calibrates the other's proposals
   (both ways), and the shipped policy routes them. A cell learnt from few decisions can be right
   by luck in-sample; cross-fitting shows what that costs. The rule: the conventional 95% (the
   detector's default), or the next stricter candidate whose cross-fitted auto-applies are wrong
   at most once in 1,000; the table the held-out part is calibrated with has the level it
   chooses. ``--tuning-only`` stops here.
2. **Held-out part**: other records, the same world; the detector runs with the tuning part's table,
   the policy is the shipped one. Nothing is chosen here. Printed, per kind and overall:
   automation (the share of right low-risk changes auto-applied), wrong auto-applies (count and
   share of what was auto-applied, with the expected count the confidences themselves promise),
   review load (items sent to review per 1,000 events), and per detector the expected calibration
   error (10 equal bins) with its reliability table. Beside them, from the same held-out proposals
   in the same run: *mean* (the shipped policy on the learnt confidences without the evidence
   floor: each cell trusted at its posterior mean, as the policy stood before 2026-12-04.2),
   *before* (the policy of 2026-12-01.1 on the detectors' prior confidences, as the code stood
   before calibration) and *priors* (the shipped policy on prior confidences).

3. **What 0 wrong can mean** (after measuring: it reads the world's hidden reliabilities,
   ``Truth.hidden_error``): for the held-out part's auto-applies, and the tuning part's in-sample
   ones, the expected number of wrong ones (the sum of their hidden error rates) and the
   probability that none is (the product of one minus each); beside them, an oracle that knows
   every rate — never which change is wrong — and auto-applies the lowest-error low-risk proposals
   first until it reaches the automation target (and the shipped policy's). If even the oracle's
   P(0 wrong) is well under 1, 0 wrong auto-applies on one stream is a draw, not a property any
   policy can guarantee at that automation.

**Low-risk** are the changes the mission lets a policy apply by itself when confident, and the
field-risk table allows: an empty field filled by enrichment, a lifecycle stage on a defined event,
an email status set to valid. Overwrites, other email statuses, AI-scored stages, owners and merges
always go to a human under the default policy; the right ones among them are counted apart.

Targets (held-out): 0 wrong auto-applies at >= 60% automation; ECE <= 0.05 per detector.

    .venv/bin/python bench/automation_safety.py [--seed 2412] [--scale 1.0] [--policy FILE]

The default seed, 2412, was picked before the evidence floor was evaluated on any held-out part;
seed 23's held-out part was seen while building the bench (reported beside it, labelled so).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import sys
import tempfile
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parent))

import labelled_stream
from _stack import preload, start_service, stop
from changegate.cli.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from changegate.core import field_risk
from changegate.core.contracts import (
    Decider,
    Decision,
    DecisionOutcome,
    Proposal,
    ProposalKind,
    Trigger,
)
from changegate.core.contracts.base import utcnow
from changegate.core.contracts.envelope import make_envelope
from changegate.core.kafka import ensure_topics
from changegate.core.serde import decode, encode
from changegate.core.settings import CommonSettings
from changegate.core.topics import Topic, TopicNames
from changegate.detector import reliability
from changegate.policy.engine import Action, Policy
from detector_quality import calibration, ece
from labelled_stream import Part, World

HERE = Path(__file__).resolve().parent
BEFORE_POLICY = HERE / "policies" / "before-2026-12-01.1.yaml"
KINDS = [k.value for k in ProposalKind]
DETECTORS = ["enrichment", "verification", "lifecycle", "owner", "dedup"]
TIMEOUT = 1800.0


# -- running a part through the services -----------------------------------------------------------


@dataclass
class Run:
    part: Part
    proposals: dict[uuid.UUID, Proposal]
    routes: dict[uuid.UUID, tuple[str, str]]  # proposal -> (action, rule)
    seconds: float


async def _metric_sum(port: int, name: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


async def _until(probe: Any, done: Any, what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what} (last: {value})")
        await asyncio.sleep(0.5)


async def run_part(part: Part, workdir: Path, bootstrap: str, server_url: str, table: Path | None) -> Run:
    name = f"safety_{part.name.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    head, _, query = server_url.partition("?")  # a socket DSN keeps its ?host=…
    database_url = head.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")
    settings = CommonSettings(
        kafka_bootstrap_servers=bootstrap, database_url=database_url, topic_prefix=f"{name}."
    )
    names = TopicNames(settings.topic_prefix)
    await ensure_topics(settings)
    detector_env = {
        "CHANGEGATE_OWNER": json.dumps(labelled_stream.DETECTOR_SETTINGS["owner"]),
        **({"CHANGEGATE_RELIABILITY_FILE": str(table)} if table else {}),
    }
    detector_port, policy_port = free_port(), free_port()
    started = time.perf_counter()
    detector = start_service(
        "changegate.detector", settings, workdir / f"detector-{part.name}.log", detector_port, detector_env
    )
    policy = start_service("changegate.policy", settings, workdir / f"policy-{part.name}.log", policy_port)
    try:
        payloads = [(e.record_id.encode(), encode(make_envelope(e, service="bench"))) for e in part.events]
        await preload(settings, [names(Topic.CRM_EVENTS)], payloads)
        conn = await asyncpg.connect(database_url)
        try:
            await _until(
                lambda: _count(
                    conn, "SELECT count(*) FROM changegate_processed_events WHERE consumer = 'detector'"
                ),
                lambda n: n >= len(part.events),
                f"the detector to process {len(part.events)} events",
            )
            emitted = int(await _metric_sum(detector_port, "changegate_detector_proposals_total"))
            proposals = await _collect_proposals(bootstrap, names(Topic.PROPOSALS), emitted)
            ids = list(proposals)
            await _until(
                lambda: _count(
                    conn, "SELECT count(*) FROM policy_routes WHERE proposal_id = ANY($1::uuid[])", ids
                ),
                lambda n: n >= len(ids),
                f"the policy to route {len(ids)} proposals",
            )
            rows = await conn.fetch(
                "SELECT proposal_id, action, rule_id FROM policy_routes WHERE proposal_id = ANY($1::uuid[])",
                ids,
            )
        finally:
            await conn.close()
    finally:
        stop(detector)
        stop(policy)
    routes = {r["proposal_id"]: (r["action"], r["rule_id"]) for r in rows}
    return Run(part, proposals, routes, time.perf_counter() - started)


async def _count(conn: asyncpg.Connection, sql: str, *args: Any) -> int:
    try:
        return int(await conn.fetchval(sql, *args))
    except asyncpg.UndefinedTableError:  # the service has not migrated yet
        return 0


async def _collect_proposals(bootstrap: str, topic: str, expected: int) -> dict[uuid.UUID, Proposal]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=20, group_id=None
    )
    await consumer.start()
    seen: dict[uuid.UUID, Proposal] = {}
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(seen) < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(seen)} of {expected} proposals arrived")
            for records in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                for record in records:
                    proposal: Proposal = decode(record.value).payload
                    seen[proposal.proposal_id] = proposal
    finally:
        await consumer.stop()
    return seen


# -- what reviewers who know the truth decide (the tuning part's labels) ---------------------------


def reviewers_decide(proposal: Proposal, right: bool, truth: labelled_stream.Truth) -> Decision:
    """Approved unchanged when right; else corrected where the truth is known (a wrong value of a
    field update, status, stage or owner), rejected otherwise (a wrong merge)."""
    fixed = [
        c.model_copy(update={"proposed": truth.values[(proposal.record_id, c.field)]})
        for c in proposal.changes
        if (proposal.record_id, c.field) in truth.values
    ]
    if right:
        outcome, final = DecisionOutcome.APPROVED, list(proposal.changes)
    elif proposal.kind is not ProposalKind.MERGE and len(fixed) == len(proposal.changes):
        outcome, final = DecisionOutcome.APPROVED_WITH_CHANGES, fixed
    else:
        outcome, final = DecisionOutcome.REJECTED, []
    return Decision(
        decision_id=uuid.uuid4(),
        proposal=proposal,
        outcome=outcome,
        decided_by=Decider(kind="human", identity="bench-reviewer"),
        decided_at=utcnow(),
        explanation="decided by the truth",
        final_changes=final,
    )


def learn_table(
    run: Run, seed: int, level: float = reliability.DEFAULT_LEVEL, fold: int | None = None
) -> reliability.ReliabilityTable:
    """The table reviewers' decisions on the tuning part teach (``fold``: only the proposals not
    in that fold, for cross-fitting)."""
    observed = []
    for proposal in run.proposals.values():
        right = run.part.truth.judge(proposal)
        if right is not None and (fold is None or fold_of(proposal) != fold):
            observed += reliability.observations(reviewers_decide(proposal, right, run.part.truth))
    return reliability.learn(
        observed,
        version=f"bench-seed{seed}-tuning" + ("" if fold is None else f"-without-fold{fold}"),
        learned_from=f"automation_safety bench, seed {seed}: the tuning part's {len(run.proposals)} "
        "proposals, decided by the truth",
        learned_at=utcnow(),
        level=level,
    )


def fold_of(proposal: Proposal) -> int:
    """Two folds by record: a record's proposals stay together."""
    return zlib.crc32(proposal.record_id.encode()) % 2


# -- measuring -------------------------------------------------------------------------------------


def shape(p: Proposal) -> str | None:
    """The low-risk shape of a proposal (None: a human decides it under the mission's policy)."""
    if field_risk.table().auto_apply_refusal(p) is not None:
        return None
    if p.kind is ProposalKind.FIELD_UPDATE and all(c.fills_empty for c in p.changes):
        return "fill"
    if p.kind is ProposalKind.LIFECYCLE_TRANSITION and p.source.trigger is Trigger.DEFINED_EVENT:
        return "defined_event"
    if p.kind is ProposalKind.EMAIL_VERIFICATION and all(c.proposed == "valid" for c in p.changes):
        return "valid"
    return None


def prior_of(p: Proposal) -> float:
    raw = p.evidence.get(reliability.BASIS)
    return float(raw["prior"]) if isinstance(raw, dict) and "prior" in raw else p.confidence


@dataclass
class Item:
    proposal: Proposal
    action: str
    right: bool

    @property
    def kind(self) -> str:
        return self.proposal.kind.value


@dataclass
class Figures:
    proposals: int = 0
    right: int = 0
    low_risk_right: int = 0
    auto_right: int = 0
    auto: int = 0
    wrong_auto: int = 0
    expected_wrong: float = 0.0
    review: int = 0
    other_right: int = 0  # right, not low-risk (a human decides them)

    @property
    def automation(self) -> float:
        return self.auto_right / self.low_risk_right if self.low_risk_right else math.nan


def figures(items: Iterable[Item]) -> dict[str, Figures]:
    out: dict[str, Figures] = defaultdict(Figures)
    for item in items:
        for key in (item.kind, "overall"):
            f = out[key]
            f.proposals += 1
            f.right += item.right
            low = shape(item.proposal) is not None
            f.low_risk_right += low and item.right
            f.other_right += (not low) and item.right
            if item.action == Action.AUTO_APPLY.value:
                f.auto += 1
                f.auto_right += low and item.right
                f.wrong_auto += not item.right
                f.expected_wrong += 1 - item.proposal.confidence
            elif item.action == Action.REVIEW.value:
                f.review += 1
    return out


def items_of(run: Run) -> tuple[list[Item], int]:
    items, unlabelled = [], 0
    for pid, proposal in run.proposals.items():
        right = run.part.truth.judge(proposal)
        if right is None:
            unlabelled += 1
            continue
        action = run.routes[pid][0]
        if action != "superseded":
            items.append(Item(proposal, action, right))
    return items, unlabelled


def rerouted(items: list[Item], policy: Policy, confidence: str) -> list[Item]:
    """The same proposals under ``policy``: with their prior (``confidence='prior'``), or their own
    confidence without the evidence floor (``'mean'``: no bound stated, so each is held to its
    confidence): what the services would have done (the engine is the service's own)."""
    out = []
    for item in items:
        p = _without_bound(item.proposal)
        if confidence == "prior":
            p = p.model_copy(update={"confidence": prior_of(p)})
        out.append(Item(p, policy.evaluate(p).action.value, item.right))
    return out


def _without_bound(proposal: Proposal) -> Proposal:
    raw = proposal.evidence.get(reliability.BASIS)
    if not isinstance(raw, dict) or "lower_bound" not in raw:
        return proposal
    said = {k: v for k, v in raw.items() if k not in ("lower_bound", "level")}
    return proposal.model_copy(update={"evidence": {**proposal.evidence, reliability.BASIS: said}})


CANDIDATES = (0.95, 0.98, 0.99, 0.995, 0.999)
MAX_WRONG_RATE = 0.001  # the choice rule: at most one wrong auto-apply in 1,000 on the tuning part


def tuning_thresholds(
    run: Run, table: reliability.ReliabilityTable
) -> dict[float, dict[str, tuple[int, int, int]]]:
    """Per candidate threshold and low-risk shape, on the tuning part with the table learnt from it
    (in-sample): (right ones at or above it, wrong ones at or above it, right ones in all)."""
    by_shape: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for proposal in run.proposals.values():
        right, s = run.part.truth.judge(proposal), shape(proposal)
        if right is not None and s is not None:
            by_shape[s].append((reliability.calibrate(_uncalibrated(proposal), table).confidence, right))
    return {
        t: {
            s: (
                sum(1 for c, ok in pairs if ok and c >= t),
                sum(1 for c, ok in pairs if not ok and c >= t),
                sum(ok for _, ok in pairs),
            )
            for s, pairs in sorted(by_shape.items())
        }
        for t in CANDIDATES
    }


def _uncalibrated(proposal: Proposal) -> Proposal:
    """The proposal as its detector made it, before a table said anything (what the basis says)."""
    raw = proposal.evidence[reliability.BASIS]
    start = {
        "cells": [{"cell": c["cell"], "field": c["field"]} for c in raw["cells"]],
        "prior": raw["prior"],
        "prior_from": raw["prior_from"],
    }
    return proposal.model_copy(update={"evidence": {**proposal.evidence, reliability.BASIS: start}})


def print_thresholds(rows: dict[float, dict[str, tuple[int, int, int]]], shipped: Policy) -> None:
    print(
        "thresholds on the tuning part (in-sample, with its table): per low-risk shape, right ones"
        " auto-applied of all right ones, and wrong ones auto-applied"
    )
    chosen = None
    for t, shapes in rows.items():
        ok = all(wrong <= MAX_WRONG_RATE * (through + wrong) for through, wrong, _ in shapes.values())
        chosen = chosen if chosen is not None or not ok else t
        cells = "   ".join(
            f"{s} {through:,}/{right:,} ({through / right:.0%}) wrong {wrong}"
            for s, (through, wrong, right) in shapes.items()
        )
        print(f"  {t:<6} {cells}")
    print(
        f"  the rule (the lowest at which each shape's auto-applies are wrong at most once in"
        f" {1 / MAX_WRONG_RATE:,.0f}) chooses {chosen}; the shipped policy's auto-apply rules say:"
    )
    for rule in shipped.document.rules:
        if rule.action is Action.AUTO_APPLY:
            print(
                f"    {rule.id:<24} min_confidence {rule.when.min_confidence}"
                f" min_confidence_bound {rule.when.min_confidence_bound}"
            )


LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)  # 0.5: the bound is about the median, near the mean


@dataclass
class LevelFigures:
    auto: int = 0
    wrong: int = 0
    auto_right: int = 0
    low_risk_right: int = 0


def tuning_levels(run: Run, seed: int, shipped: Policy) -> dict[float, tuple[LevelFigures, LevelFigures]]:
    """Per candidate level, on the tuning part only, the shipped policy's routes: cross-fitted
    (each fold calibrated by a table learnt from the other) and in-sample (the whole part's table,
    what the held-out part is calibrated with)."""
    labelled = [(p, r) for p in run.proposals.values() if (r := run.part.truth.judge(p)) is not None]
    out = {}
    for level in LEVELS:
        tables = {f: learn_table(run, seed, level, fold=f) for f in (0, 1)}
        whole = learn_table(run, seed, level)
        cross, inside = LevelFigures(), LevelFigures()
        for proposal, right in labelled:
            start = _uncalibrated(proposal)
            low = shape(proposal) is not None
            for f, table in ((cross, tables[fold_of(proposal)]), (inside, whole)):
                routed = shipped.evaluate(reliability.calibrate(start, table)).action is Action.AUTO_APPLY
                f.low_risk_right += low and right
                f.auto += routed
                f.wrong += routed and not right
                f.auto_right += routed and low and right
        out[level] = (cross, inside)
    return out


def in_sample(run: Run, table: reliability.ReliabilityTable, policy: Policy) -> list[Item]:
    """The tuning part's labelled proposals as ``policy`` routes them once calibrated by ``table``
    (learnt from these same proposals: in-sample, what the tuning part can say of a policy)."""
    return [
        Item(p, policy.evaluate(reliability.calibrate(_uncalibrated(p), table)).action.value, right)
        for p in run.proposals.values()
        if (right := run.part.truth.judge(p)) is not None
    ]


def print_levels(rows: dict[float, tuple[LevelFigures, LevelFigures]]) -> float | None:
    print(
        "\nthe evidence floor's level on the tuning part (shipped policy): cross-fitted (2 folds by"
        " record, each calibrated by the other's table) and in-sample (the whole part's table)"
    )
    print(
        f"  {'level':<7}{'cross: auto':>12}{'wrong':>7}{'automation':>11}"
        f"{'in-sample: auto':>17}{'automation':>11}"
    )
    for level, (cross, inside) in rows.items():
        print(
            f"  {level:<7}{cross.auto:>12,}{cross.wrong:>7}{cross.auto_right / cross.low_risk_right:>11.1%}"
            f"{inside.auto:>17,}{inside.auto_right / inside.low_risk_right:>11.1%}"
        )
    # The level is a statement of risk: 95% by convention. The tuning part must confirm it (its
    # cross-fitted auto-applies wrong at most once in 1,000, the thresholds' rule); else the next
    # stricter candidate that does. The automation target is reported, never traded for it.
    ok = [
        level
        for level, (cross, _) in rows.items()
        if level >= reliability.DEFAULT_LEVEL and cross.wrong <= MAX_WRONG_RATE * cross.auto
    ]
    chosen = min(ok) if ok else None
    print(
        f"  the rule (the conventional {reliability.DEFAULT_LEVEL:.0%}, or the next stricter level whose"
        f" cross-fitted auto-applies are wrong at most once in {1 / MAX_WRONG_RATE:,.0f}) chooses {chosen};"
        f" the detector's default level is {reliability.DEFAULT_LEVEL}"
    )
    return chosen


# -- printing --------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1%}"


def print_figures(title: str, rows: dict[str, dict[str, Figures]], events: int) -> None:
    print(f"\n{title}")
    print(
        f"{'kind':<22}{'':<8}{'proposals':>10}{'right':>8}{'low-risk right':>15}{'auto-applied':>13}"
        f"{'automation':>11}{'wrong auto':>11}{'expected':>9}{'review /1k ev':>14}"
    )
    for kind in [*KINDS, "overall"]:
        for label, table in rows.items():
            f = table.get(kind)
            if f is None:
                continue
            wrong = f"{f.wrong_auto} ({f.wrong_auto / f.auto:.1%})" if f.auto else "0"
            print(
                f"{kind if label == next(iter(rows)) else '':<22}{label:<8}{f.proposals:>10,}{f.right:>8,}"
                f"{f.low_risk_right:>15,}{f.auto:>13,}{_pct(f.automation):>11}{wrong:>11}"
                f"{f.expected_wrong:>9.1f}{1000 * f.review / events:>14.1f}"
            )


def print_calibration(items: list[Item]) -> dict[str, float]:
    by_detector: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for item in items:
        by_detector[item.proposal.source.detector].append((item.proposal.confidence, item.right))
    eces = {}
    print(
        "\ncalibration per detector (held-out; 10 equal bins): ECE, and per bin"
        " n / mean confidence / share right"
    )
    for detector in DETECTORS:
        observed = by_detector.get(detector, [])
        eces[detector] = ece(observed)
        bins = "  ".join(f"{b}: {n} {c:.3f}/{r:.3f}" for b, n, c, r in calibration(observed))
        print(f"  {detector:<13} n {len(observed):>6,}  ECE {eces[detector]:.4f}   {bins}")
    return eces


def print_wrong_auto_applies(items: list[Item], table: reliability.ReliabilityTable) -> None:
    """Each wrong auto-apply of the held-out part: its cells, confidence and what the table held."""
    wrong = [i for i in items if i.action == Action.AUTO_APPLY.value and not i.right]
    print(f"\nwrong auto-applies on the held-out part: {len(wrong)}")
    for item in wrong:
        said = item.proposal.evidence.get(reliability.BASIS, {})
        cells = [c.get("cell", "?") for c in said.get("cells", [])]
        counts = [table.cells.get(c, reliability.CellCounts()) for c in cells]
        held = ", ".join(
            f"{c} ({n.approved} approved, {n.corrected} corrected)"
            for c, n in zip(cells, counts, strict=True)
        )
        print(
            f"  {item.kind} confidence {item.proposal.confidence:.4f} lower bound"
            f" {said.get('lower_bound', '-')} prior {prior_of(item.proposal):.3f}: {held}"
        )


# -- what "0 wrong" can mean: the odds by the world's hidden reliabilities ----------------------------

AUTOMATION_TARGET = 0.6  # of right low-risk changes auto-applied (the target)


@dataclass(frozen=True)
class Odds:
    """A set of auto-applies seen through the error rates of what each one rests on: how many,
    how many wrong in expectation (the sum of the rates), and the probability that none is (the
    product of one minus each, the changes taken as independent)."""

    n: int
    expected_wrong: float
    p_none_wrong: float


def odds(errors: Iterable[float]) -> Odds:
    rates = list(errors)
    return Odds(len(rates), math.fsum(rates), math.prod(1 - e for e in rates))


def oracle(candidates: Iterable[tuple[float, bool]], automation: float) -> Odds:
    """The odds of a policy that knows every hidden error rate and nothing more: of the low-risk
    proposals ``candidates`` — (the rate its source or cell is wrong, whether it is right) — it
    auto-applies the lowest rates first until it has ``automation`` of the right ones. It cannot tell
    a wrong change from a right one of the same rate: ties keep the given order (label-blind), and
    only the stopping point is counted on the labels, as the bench counts any policy's automation."""
    ranked = sorted(candidates, key=lambda c: c[0])  # stable: ties stay in the given order
    need = math.ceil(automation * sum(right for _, right in ranked) - 1e-9)  # 0.6 * 5 is 3.0000000000000004
    taken: list[float] = []
    got = 0
    for error, right in ranked:
        if got >= need:
            break
        taken.append(error)
        got += right
    return odds(taken)


def print_floor(title: str, items: list[Item], truth: labelled_stream.Truth) -> None:
    """Whether 0 wrong auto-applies is something a policy could guarantee on this part, or a draw:
    the shipped policy's auto-applies and an oracle's at the target, by the hidden reliabilities."""
    auto = [i for i in items if i.action == Action.AUTO_APPLY.value]
    shipped = odds(truth.hidden_error(i.proposal) for i in auto)
    low = [i for i in items if shape(i.proposal) is not None]
    right = [i for i in low if i.right]
    if not right:
        print(f"\nno right low-risk proposals on {title}: nothing to automate")
        return
    candidates = [(truth.hidden_error(i.proposal), i.right) for i in low]
    automation = sum(1 for i in auto if i.right and shape(i.proposal) is not None) / len(right)
    print(f"\nwhat 0 wrong auto-applies can mean, by the world's hidden error rates: {title}")
    print(f"  {'':<54}{'auto-applied':>13}{'wrong, expected':>17}{'P(0 wrong)':>12}{'wrong, seen':>13}")

    def row(label: str, o: Odds, seen: int | str) -> None:
        print(f"  {label:<54}{o.n:>13,}{o.expected_wrong:>17.3f}{o.p_none_wrong:>12.3f}{seen:>13}")

    row(f"shipped policy ({_pct(automation)} automation)", shipped, sum(1 for i in auto if not i.right))
    for share in sorted({AUTOMATION_TARGET, automation}):
        row(f"oracle, lowest hidden error first, to {share:.1%} automation", oracle(candidates, share), "-")
    clean = sum(1 for i in right if truth.hidden_error(i.proposal) <= 1e-4)
    print(
        "  the oracle knows each source's or cell's rate, never which change is wrong; the generator draws"
        " each error apart from anything a detector sees, so no policy can promise more P(0 wrong) at"
        f" that automation on this world. {clean:,} of the {len(right):,} right"
        f" low-risk proposals ({clean / len(right):.1%}) come from sources wrong at most once in 10,000."
    )


def print_targets(after: Figures, eces: dict[str, float]) -> bool:
    bound = 3 / after.auto if after.auto else math.nan  # rule of three: 95% upper bound when 0 seen
    checks = {
        f"0 wrong auto-applies (seen {after.wrong_auto} of {after.auto:,}"
        + (f"; 95% upper bound on the rate {bound:.2%})" if after.wrong_auto == 0 else ")"): after.wrong_auto
        == 0,
        f">= {AUTOMATION_TARGET:.0%} automation of right low-risk changes ({_pct(after.automation)})": (
            after.automation >= AUTOMATION_TARGET
        ),
        **{f"ECE <= 0.05: {d} ({e:.4f})": e <= 0.05 for d, e in eces.items()},
    }
    print("\ntargets (held-out, shipped policy):")
    for what, ok in checks.items():
        print(f"  {'met    ' if ok else 'NOT met'}  {what}")
    return all(checks.values())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seed", type=int, default=2412, help="the world: sources, records, events (23: already seen)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="size of each part (1: ~20k events)")
    parser.add_argument("--policy", type=Path, default=None, help="policy file (default: the shipped one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, table)")
    parser.add_argument(
        "--tuning-only", action="store_true", help="stop after the tuning part (thresholds, level)"
    )
    args = parser.parse_args()
    shipped = Policy.load(args.policy)
    world = World(args.seed, args.scale)
    tuning, held_out = world.part("tuning"), world.part("held-out")
    print(
        f"seed {args.seed}, scale {args.scale}: tuning part {len(tuning.events):,} events "
        f"{labelled_stream.scenario_counts(tuning)}; held-out part {len(held_out.events):,} events "
        f"{labelled_stream.scenario_counts(held_out)}"
    )
    print(f"policy {shipped.version} ({shipped.source}); before: {BEFORE_POLICY.name}")
    workdir = Path(tempfile.mkdtemp(prefix="changegate-safety-"))
    broker = EmbeddedBroker(free_port(), workdir / "broker.log")
    postgres = EmbeddedPostgres(workdir / "pg")
    ok = False
    try:
        bootstrap, server_url = broker.start(), postgres.start()
        tune = asyncio.run(run_part(tuning, workdir, bootstrap, server_url, None))
        print(
            f"tuning part: {len(tune.proposals):,} proposals in {tune.seconds:.0f} s"
            " (detector without a table)"
        )
        print_thresholds(tuning_thresholds(tune, learn_table(tune, args.seed)), shipped)
        chosen = print_levels(tuning_levels(tune, args.seed, shipped))
        level = chosen if chosen is not None else max(LEVELS)
        table = learn_table(tune, args.seed, level)
        tuning_items = in_sample(tune, table, shipped)
        tuning_title = f"the tuning part (shipped policy, in-sample: its own table at level {level})"
        if args.tuning_only:
            print_floor(tuning_title, tuning_items, tuning.truth)
            ok = True
            return
        table_file = workdir / "reliability.json"
        table_file.write_text(table.model_dump_json(indent=1))
        print(
            f"reliability table learnt from the tuning part: {len(table.cells)} cells, level {level}"
            + ("" if chosen is not None else " (no level met the rule: the strictest)")
        )
        held = asyncio.run(run_part(held_out, workdir, bootstrap, server_url, table_file))
        print(
            f"held-out part: {len(held.proposals):,} proposals in {held.seconds:.0f} s"
            " (detector with the table)"
        )
        items, unlabelled = items_of(held)
        superseded = sum(1 for a, _ in held.routes.values() if a == "superseded")
        print(f"  {unlabelled} proposals without a label, {superseded} superseded before routing (left out)")
        mean = rerouted(items, shipped, "mean")
        before = rerouted(items, Policy.load(BEFORE_POLICY), "prior")
        priors = rerouted(items, shipped, "prior")
        events = len(held_out.events)
        after = figures(items)
        print_figures(
            f"held-out, {events:,} events: after = shipped policy with learnt confidences and their"
            " evidence floor (the services' routes); mean = the same without the floor;"
            " priors = shipped policy, prior confidences; before = policy 2026-12-01.1, prior confidences",
            {"after": after, "mean": figures(mean), "priors": figures(priors), "before": figures(before)},
            events,
        )
        print(
            "  (expected = the wrong auto-applies the confidences themselves promise:"
            " the sum of 1 - confidence)"
        )
        eces = print_calibration(items)
        prior_eces = {
            d: ece([(i.proposal.confidence, i.right) for i in priors if i.proposal.source.detector == d])
            for d in DETECTORS
        }
        print(
            "calibration before (prior confidences): ECE "
            + "  ".join(f"{d} {e:.4f}" for d, e in prior_eces.items())
        )
        ok = print_targets(after["overall"], eces)
        print("\nthe world's hidden reliabilities (read by the generator only; shown after measuring):")
        for line in labelled_stream.describe_hidden():
            print(f"  {line}")
        print_wrong_auto_applies(items, table)
        print_floor("the held-out part (the services' routes)", items, held_out.truth)
        print_floor(tuning_title, tuning_items, tuning.truth)
    finally:
        broker.stop()
        postgres.stop()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
