"""Duplicate finder quality on a labelled synthetic CRM population, streamed record by record
through the detector's own matching code (normalise, block, compare, score).

Prints precision, recall and F1 of merge proposals at the configured review threshold, the same
for a baseline measured in the same run (exact match on normalised email), candidates per event,
and how well the match probability is calibrated. Target: F1 >= 0.95 with precision >= 0.98.

    .venv/bin/python bench/detector_quality.py [--people 20000] [--seed 2]
    .venv/bin/python bench/detector_quality.py --fit --seed 1   # estimate m/u weights (print)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from changegate.detector.matching.blocking import blocking_keys
from changegate.detector.matching.compare import compare
from changegate.detector.matching.engine import DuplicateFinder
from changegate.detector.matching.normalize import Features, features
from crm_population import Population, Record, true_pairs

CANDIDATES_PER_KEY = 50
FLOOR = 0.002  # the service reads at most this many records per blocking key


def candidate_pairs(records: Iterable[Record]) -> Iterable[tuple[Record, Features, str, Features, int]]:
    """Stream records; for each, the earlier records sharing a blocking key (as the service sees)."""
    index: dict[str, list[str]] = defaultdict(list)
    seen: dict[str, tuple[Features, int]] = {}
    for r in records:
        f = features("contact", r.properties)
        keys = blocking_keys(f)
        cands = {rid for k in keys for rid in index.get(k, ())[-CANDIDATES_PER_KEY:]}
        for other in cands:
            of, entity = seen[other]
            yield r, f, other, of, entity
        for k in keys:
            index[k].append(r.record_id)
        seen[r.record_id] = (f, r.entity)


def prf(predicted: set[frozenset[str]], truth: set[frozenset[str]]) -> tuple[float, float, float]:
    tp = len(predicted & truth)
    p = tp / len(predicted) if predicted else 1.0
    r = tp / len(truth) if truth else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def fit(records: list[Record]) -> None:
    counts: dict[bool, dict[str, Counter[str]]] = {True: defaultdict(Counter), False: defaultdict(Counter)}
    pairs = Counter[bool]()
    for r, f, _, of, entity in candidate_pairs(records):
        same = entity == r.entity
        pairs[same] += 1
        for field, level in compare(f, of).items():
            counts[same][field][level] += 1
    print(
        f"# fitted on {len(records)} records, {pairs[True]} matching and {pairs[False]} other candidate pairs"
    )
    print(f"prior = {pairs[True] / (pairs[True] + pairs[False]):.4f}")
    print("DEFAULT_MU = {")
    for field in sorted(set(counts[True]) | set(counts[False])):
        levels = sorted(set(counts[True][field]) | set(counts[False][field]))
        nm, nu = sum(counts[True][field].values()), sum(counts[False][field].values())
        cells = []
        for lvl in levels:
            # Floored: a level never seen in the synthetic data must not become a hard veto.
            m = max(FLOOR, (counts[True][field][lvl] + 0.5) / (nm + 0.5 * len(levels)))
            u = max(FLOOR, (counts[False][field][lvl] + 0.5) / (nu + 0.5 * len(levels)))
            if lvl == "disagree":
                m = min(m, u)  # disagreeing never counts for a match (blocking skews this otherwise)
            cells.append(f'"{lvl}": ({m:.4g}, {u:.4g})')
        print(f'    "{field}": {{{", ".join(cells)}}},')
    print("}")


def evaluate(records: list[Record], finder: DuplicateFinder) -> None:
    truth = true_pairs(records)
    predicted: set[frozenset[str]] = set()
    baseline: set[frozenset[str]] = set()
    per_event: Counter[str] = Counter()
    calibration: dict[int, list[bool]] = defaultdict(list)
    sweep = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
    at: dict[float, set[frozenset[str]]] = {t: set() for t in sweep}
    norm: Callable[[object], str] = lambda v: str(v or "").strip().lower()  # noqa: E731
    by_email: dict[str, list[str]] = defaultdict(list)
    for r in records:
        e = norm(r.properties.get("email"))
        if e:
            baseline.update(frozenset((r.record_id, o)) for o in by_email[e])
            by_email[e].append(r.record_id)
    for r, f, other, of, entity in candidate_pairs(records):
        per_event[r.record_id] += 1
        m = finder.compare(f, other, of)
        calibration[min(9, int(m.probability * 10))].append(entity == r.entity)
        if m.probability >= finder.threshold:
            predicted.add(frozenset((r.record_id, other)))
        for t in sweep:
            if m.probability >= t:
                at[t].add(frozenset((r.record_id, other)))
    p, rc, f1 = prf(predicted, truth)
    bp, br, bf = prf(baseline, truth)
    counts = [per_event.get(r.record_id, 0) for r in records]
    print(f"population: {len(records)} records, {len(truth)} true duplicate pairs")
    print(f"threshold:  match probability >= {finder.threshold}")
    print(f"{'':24s}{'precision':>10s}{'recall':>10s}{'F1':>10s}")
    print(f"{'changegate matcher':24s}{p:>10.3f}{rc:>10.3f}{f1:>10.3f}   ({len(predicted)} proposed pairs)")
    print(f"{'baseline: exact email':24s}{bp:>10.3f}{br:>10.3f}{bf:>10.3f}   ({len(baseline)} pairs)")
    print(f"candidates per event: mean {statistics.mean(counts):.2f}, max {max(counts)}")
    print(
        "other thresholds:  "
        + "  ".join(f"{t}: P {prf(at[t], truth)[0]:.3f} R {prf(at[t], truth)[1]:.3f}" for t in sweep)
    )
    print("calibration (predicted probability bin: pairs, observed match rate):")
    for b in sorted(calibration):
        obs = calibration[b]
        print(f"  {b / 10:.1f}-{(b + 1) / 10:.1f}: {len(obs):>7d}  {sum(obs) / len(obs):.3f}")
    ok = f1 >= 0.95 and p >= 0.98
    print(f"target F1 >= 0.95 and precision >= 0.98: {'met' if ok else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=20_000, help="entities in the population")
    parser.add_argument("--seed", type=int, default=2, help="population seed (weights were fitted on 1)")
    parser.add_argument("--fit", action="store_true", help="estimate m/u from the labels and print them")
    args = parser.parse_args()
    records = Population(args.seed).records(args.people)
    if args.fit:
        fit(records)
    else:
        evaluate(records, DuplicateFinder())


if __name__ == "__main__":
    main()
