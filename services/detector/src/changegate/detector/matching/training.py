"""Unsupervised estimation of the duplicate finder's model from a CRM snapshot, with Splink.

- **u** from random record pairs (Splink's ``estimate_u_using_random_sampling``): among random
  pairs nearly all are different people, so level shares there are the non-match shares - once
  the few matches among them are taken out (``without_matches``: where duplicates are dense,
  they are much of what a rare level such as the same address counts);
- **m** by expectation-maximisation (Splink's EM), one session per blocking rule; a session does
  not estimate the comparisons its rule reads (their levels are forced by the rule), and Splink
  averages each m over the sessions that estimated it;
- **term frequencies** of first names, last names and cities: the share of records per value
  (names the records hold once are looked up in a public reference instead: ``reference.py``);
- **prior** (``probability_two_random_records_match``): the expected number of matches among
  the pairs the detector's own blocking produces, under the fitted m and u (a fixed point), over
  all pairs; pairs no blocking key brings together are taken as non-matches.

The levels are those of ``compare.COMPARISONS``, evaluated by the very functions the streaming
scorer uses: each comparison is registered in DuckDB as a Python function of the feature columns
it declares, and Splink's level conditions call it. No labels are read."""

from __future__ import annotations

import logging
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from changegate.detector.matching.blocking import blocking_keys, select_candidates
from changegate.detector.matching.compare import COMPARISONS, TF_COLUMNS, ComparisonSpec, compare
from changegate.detector.matching.model import (
    Comparison,
    ComparisonLevel,
    MatchModel,
    TermFrequencies,
    enforce_order,
)
from changegate.detector.matching.normalize import Features
from changegate.detector.matching.reference import Reference
from changegate.detector.matching.scoring import Scorer

# EM sessions (Splink's recipe): each blocks on the columns of some comparisons, which that
# session then cannot estimate, and estimates the others. Splink assumes the rule tells nothing of
# the other comparisons among non-matches; a place breaks that in a CRM: people at one postcode
# share their company, its domain and its switchboard. So the postcode session also declares those
# columns (it does not estimate them), and EM's match class stays "the same person" rather than
# "the same company". Sessions: (rule columns, columns it decides besides).
EM_SESSIONS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("postcode",), ("company", "domain", "email_domain", "phone")),
    (("first", "last"), ()),
    (("email",), ()),
)
MIN_SESSION_PAIRS = 200
PRIOR_SAMPLE = 20_000
M_FLOOR = 0.001
PRIOR_ITERATIONS = 50
# u is corrected for the matches among random pairs (``without_matches``) with the prior, which
# depends on u: a few rounds of the two reach their fixed point.
U_CORRECTION_ROUNDS = 3
U_MATCH_SHARE_MAX = 8.0
FEATURE_COLUMNS: tuple[str, ...] = tuple(
    sorted(
        {c for s in COMPARISONS for c in s.columns}
        | set(TF_COLUMNS)
        | {c for rule, decided in EM_SESSIONS for c in (*rule, *decided)}
    )
)

Step = Callable[[str], None]


@dataclass(frozen=True)
class TrainingOptions:
    u_pairs: float = 2e6
    em_pairs: float = 1e6
    seed: int = 42
    model_version: str | None = None


# Public frequencies for the values of a column that the records do not list (``reference.py``).
TF_REFERENCES: dict[str, Reference] = {"first": "us-census-1990-first", "last": "us-census-1990-last"}


def term_frequencies(records: Sequence[Features], column: str) -> TermFrequencies:
    """Share of the records holding a value of ``column`` per value (values held at least twice)."""
    counts = Counter(v for r in records if (v := getattr(r, column)))
    total = sum(counts.values())
    reference = TF_REFERENCES.get(column)
    if not total:
        return TermFrequencies(values={}, rare=1.0, reference=reference)
    return TermFrequencies(
        values={v: n / total for v, n in sorted(counts.items()) if n >= 2},
        rare=1 / total,
        reference=reference,
    )


def _level_function(records: Sequence[Features]) -> Callable[[str, int, int], str]:
    """``cg_level(comparison, unique_id_l, unique_id_r)``: the comparison's level for two records
    ('' when either lacks the data), by the comparison's own function. DuckDB evaluates one call
    per comparison and pair (identical calls in a CASE are computed once)."""
    functions = {spec.name: spec.level for spec in COMPARISONS}

    def level(name: str, left: int, right: int) -> str:
        return functions[name](records[left], records[right]) or ""

    return level


def _splink_comparison(spec: ComparisonSpec) -> dict[str, Any]:
    call = f'cg_level(\'{spec.name}\', "unique_id_l", "unique_id_r")'
    # The null level names the feature columns the comparison reads (a no-op at run time): Splink
    # learns from them which comparisons an EM session's blocking rule decides.
    columns = ", ".join(f'"{c}_{side}"' for c in spec.columns for side in "lr")
    levels: list[dict[str, Any]] = [
        {
            "sql_condition": f"{call} = '' AND coalesce({columns}, '') IS NOT NULL",
            "label_for_charts": "null",
            "is_null_level": True,
        }
    ]
    for label in spec.levels[:-1]:
        level: dict[str, Any] = {"sql_condition": f"{call} = '{label}'", "label_for_charts": label}
        if label in spec.tf_columns:
            level |= {
                "tf_adjustment_column": spec.tf_columns[label],
                "tf_adjustment_weight": 1.0,
                "disable_tf_exact_match_detection": True,
            }
        levels.append(level)
    levels.append({"sql_condition": "ELSE", "label_for_charts": spec.levels[-1]})
    return {"output_column_name": spec.name, "comparison_levels": levels}


def _session_pairs(records: Sequence[Features], columns: tuple[str, ...]) -> int:
    groups = Counter(key for r in records if all(key := tuple(getattr(r, c) for c in columns)))
    return sum(n * (n - 1) // 2 for n in groups.values())


def estimate_with_splink(
    records: Sequence[Features], options: TrainingOptions, step: Step
) -> tuple[dict[str, dict[str, tuple[float | None, float | None]]], list[str], list[str]]:
    """(comparison -> level -> (m, u)) estimated by Splink, the EM sessions that ran, and those
    Splink gave up on (with why)."""
    import duckdb
    import pandas as pd  # type: ignore[import-untyped]
    from splink import DuckDBAPI, Linker, SettingsCreator

    for name in ("splink", "duckdb"):
        logging.getLogger(name).setLevel(logging.WARNING)
    frame = pd.DataFrame(
        {
            "unique_id": range(len(records)),
            **{c: [getattr(r, c) or None for r in records] for c in FEATURE_COLUMNS},
        }
    )
    con = duckdb.connect()
    con.create_function("cg_level", _level_function(records), ["VARCHAR", "BIGINT", "BIGINT"], "VARCHAR")
    db = DuckDBAPI(connection=con)
    settings = SettingsCreator(
        link_type="dedupe_only",
        comparisons=[_splink_comparison(s) for s in COMPARISONS],
        probability_two_random_records_match=0.0001,
    )
    linker = Linker(db.register(frame), settings, log_level=logging.WARNING)
    step(f"u from {options.u_pairs:,.0f} random pairs")
    linker.training.estimate_u_using_random_sampling(max_pairs=options.u_pairs, seed=options.seed)
    sessions: list[str] = []
    skipped: list[str] = []
    for rule, decided in EM_SESSIONS:
        pairs = _session_pairs(records, rule)
        if pairs < MIN_SESSION_PAIRS:
            continue
        step(f"m by EM, blocking on {' + '.join(rule)} ({pairs:,} pairs)")
        sql = " AND ".join(f'l."{c}" = r."{c}"' for c in rule)
        if decided:  # always true: names the columns for Splink, which then leaves them out
            named = ", ".join(f'l."{c}"' for c in decided)
            sql += f" AND coalesce({named}, '') IS NOT NULL"
        try:
            linker.training.estimate_parameters_using_expectation_maximisation(
                sql, max_pairs=options.em_pairs if pairs > options.em_pairs else None
            )
        except ValueError as exc:
            # Splink 5 refuses an m that EM drives below 1e-300 instead of clamping it; the other
            # sessions still estimate every comparison this one would have.
            skipped.append(f"{'+'.join(rule)}: {str(exc).splitlines()[0]}")
            continue
        sessions.append("+".join(rule))
    params: dict[str, dict[str, tuple[float | None, float | None]]] = {}
    for comparison in linker.misc.save_model_to_json()["comparisons"]:
        params[comparison["output_column_name"]] = {
            level["label_for_charts"]: (level.get("m_probability"), level.get("u_probability"))
            for level in comparison["comparison_levels"]
            if not level.get("is_null_level")
        }
    return params, sessions, skipped


def build_model(
    params: dict[str, dict[str, tuple[float | None, float | None]]],
    tfs: dict[str, TermFrequencies],
    prior: float,
    *,
    u_floor: float,
    version: str,
    training: dict[str, Any],
) -> MatchModel:
    """The model file from estimated parameters. A comparison no EM session could estimate (the
    data lacks it: no emails, no companies) is left out: it weighs nothing. Within a comparison, a
    level EM never saw among matches gets m = ``M_FLOOR`` and one never seen among random pairs
    u = ``u_floor``: rare evidence, never a certainty either way. A level seen nowhere is left out
    (weight 0 should it ever occur)."""
    comparisons = []
    for spec in COMPARISONS:
        estimated = params.get(spec.name, {})
        if not any(m for m, _ in estimated.values()):
            continue
        levels = []
        for label in spec.levels:
            m, u = estimated.get(label, (None, None))
            if not m and not u:
                continue
            column = spec.tf_columns.get(label)
            levels.append(
                ComparisonLevel(
                    label_for_charts=label,
                    m_probability=min(1.0, max(m or 0.0, M_FLOOR)),
                    u_probability=min(1.0, max(u or 0.0, u_floor)),
                    tf_adjustment_column=column if column in tfs else None,
                )
            )
        comparisons.append(Comparison(output_column_name=spec.name, comparison_levels=levels))
    return enforce_order(
        MatchModel(
            model_version=version,
            probability_two_random_records_match=prior,
            comparisons=comparisons,
            term_frequencies=tfs,
            training=training,
        )
    )


def candidate_pairs(records: Sequence[Features], sample: Iterable[int]) -> Iterable[tuple[int, int]]:
    """Pairs (i, j) the detector's blocking brings together, for each sampled record i, selected
    as the service's index selects them."""
    index: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        for key in blocking_keys(r):
            index[key].append(i)
    for i in sample:
        holders = ([j for j in index[key] if j != i] for key in blocking_keys(records[i]))
        yield from ((i, j) for j in select_candidates(holders))


def _candidate_comparisons(
    records: Sequence[Features], seed: int
) -> tuple[list[tuple[dict[str, str], Features, Features]], float]:
    """The levels of the candidate pairs of a sample of records (compared once, scored under each
    model of the fixed point), and the factor from the sample to all records' candidate pairs."""
    n = len(records)
    rng = random.Random(seed)
    sample = rng.sample(range(n), min(n, PRIOR_SAMPLE))
    pairs = [
        (compare(records[i], records[j]), records[i], records[j]) for i, j in candidate_pairs(records, sample)
    ]
    return pairs, n / (2 * len(sample))  # each pair is found from either end, and only sampled ends look


def _prior(
    model: MatchModel, pairs: Sequence[tuple[dict[str, str], Features, Features]], scale: float, n: int
) -> float:
    scorer = Scorer(model)
    totals = [scorer.score(levels, a, b).total for levels, a, b in pairs]
    all_pairs = n * (n - 1) / 2
    lam = model.probability_two_random_records_match
    for _ in range(PRIOR_ITERATIONS):
        logit = math.log2(lam / (1 - lam))
        expected = sum(1 / (1 + 2.0 ** -(t + logit)) for t in totals) * scale
        new = min(0.5, max(expected, 1.0) / all_pairs)
        if abs(math.log2(new / lam)) < 1e-4:
            lam = new
            break
        lam = new
    return lam


def estimate_prior(model: MatchModel, records: Sequence[Features], seed: int) -> tuple[float, int]:
    """The prior as the fixed point of lambda = E[matches among candidate pairs] / all pairs.
    Returns it and the number of candidate pairs it was computed on."""
    pairs, scale = _candidate_comparisons(records, seed)
    return _prior(model, pairs, scale, len(records)), len(pairs)


def without_matches(model: MatchModel, prior: float, u_floor: float) -> MatchModel:
    """u with the matches among the random pairs taken out. Random pairs are a mixture, a share
    ``prior`` of matches (at their levels' m) and the rest non-matches: u_observed = prior * m +
    (1 - prior) * u. Where duplicates are dense and a level rare (the same address), matches make
    up much of what random sampling counts, and the level's weight comes out too low. The estimate
    is noisy when few sampled pairs reach a level, so it is lowered by at most ``U_MATCH_SHARE_MAX``."""
    comparisons = []
    for comparison in model.comparisons:
        levels = []
        for level in comparison.comparison_levels:
            u = level.u_probability
            corrected = (u - prior * level.m_probability) / (1 - prior)
            levels.append(
                level.model_copy(update={"u_probability": max(corrected, u / U_MATCH_SHARE_MAX, u_floor)})
            )
        comparisons.append(comparison.model_copy(update={"comparison_levels": levels}))
    return enforce_order(
        model.model_copy(update={"comparisons": comparisons, "probability_two_random_records_match": prior})
    )


def train(records: Sequence[Features], options: TrainingOptions, step: Step = lambda _: None) -> MatchModel:
    if len(records) < 2:
        raise ValueError("training needs at least two records")
    params, sessions, skipped = estimate_with_splink(records, options, step)
    step("term frequencies")
    tfs = {c: term_frequencies(records, c) for c in TF_COLUMNS}
    trained_at = datetime.now(UTC).replace(microsecond=0)
    version = options.model_version or f"trained-{trained_at:%Y%m%dT%H%M%SZ}"
    training = {
        "method": (
            "splink: u from random pairs less their matches, m by EM; prior by fixed point over blocked pairs"
        ),
        "trained_at": trained_at.isoformat(),
        "records": len(records),
        "u_pairs": options.u_pairs,
        "em_sessions": sessions,
        "em_sessions_failed": skipped,
        "seed": options.seed,
        "labels_used": False,
    }
    u_floor = 1 / options.u_pairs
    model = build_model(params, tfs, 1e-4, u_floor=u_floor, version=version, training=training)
    step("prior over blocked candidate pairs; u without the matches among random pairs")
    pairs, scale = _candidate_comparisons(records, options.seed)
    sampled = model
    for _ in range(U_CORRECTION_ROUNDS):
        model = without_matches(sampled, _prior(model, pairs, scale, len(records)), u_floor)
    prior = _prior(model, pairs, scale, len(records))
    return model.model_copy(
        update={
            "probability_two_random_records_match": prior,
            "training": {**training, "prior_candidate_pairs": len(pairs)},
        }
    )
