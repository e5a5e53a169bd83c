"""What a policy does to a body of proposals, and what would change against another policy."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from changegate.core.contracts import Proposal
from changegate.policy.engine import Policy
from pydantic import ValidationError


@dataclass
class Simulation:
    total: int = 0
    by_route: Counter[str] = field(default_factory=Counter)
    by_rule: Counter[tuple[str, str]] = field(default_factory=Counter)
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    changed_rules: int = 0
    invalid: list[str] = field(default_factory=list)

    @property
    def changed_routes(self) -> int:
        return sum(n for (a, b), n in self.transitions.items() if a != b)


def read_proposals(path: Path) -> Iterator[tuple[int, Proposal | str]]:
    """Proposals from a JSON-lines file: bare proposals, envelopes, decisions or review requests
    (the proposal inside is taken). Yields (line, proposal or the reason a line is unusable)."""
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield number, Proposal.model_validate(proposal_part(json.loads(line)))
            except (json.JSONDecodeError, ValidationError, TypeError) as exc:
                reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
                yield number, f"line {number}: not a proposal ({reason})"


def proposal_part(raw: Any) -> Any:
    if isinstance(raw, dict) and "payload" in raw:
        raw = raw["payload"]
    if isinstance(raw, dict) and "proposal" in raw:
        raw = raw["proposal"]
    return raw


def simulate(
    policy: Policy, items: Iterable[tuple[int, Proposal | str]], against: Policy | None = None
) -> Simulation:
    sim = Simulation()
    for _, item in items:
        if isinstance(item, str):
            sim.invalid.append(item)
            continue
        route = policy.evaluate(item)
        sim.total += 1
        sim.by_route[route.action.value] += 1
        sim.by_rule[(route.rule_id, route.action.value)] += 1
        if against is not None:
            before = against.evaluate(item)
            sim.transitions[(before.action.value, route.action.value)] += 1
            sim.changed_rules += before.rule_id != route.rule_id
    return sim
