"""Train, evaluate and export: the one entry point, as a function and as a CLI (no Django).

    python -m ml.train --events FILE [--format csv|jsonl|movielens] [--weights view=1,click=2]
                       [--repository DIR --name NAME] [--evaluate-only] [--no-evaluate]

Steps: read events -> de-duplicated per-user sequences -> (evaluation: temporal leave-last-out,
model vs popularity vs EASE, hyper-parameters tuned on a validation split of the training part)
-> fit on all data -> export the next version with a model card. Bad input ends with
``error: <message>`` and exit status 2, never a traceback.

Python callers (the Django command and the Celery task) use ``train_and_export``.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # Multi-threaded OpenBLAS on a busy 2-core host is several times slower than one thread
    # (ml-latest-small training: 89 s vs 13 s). Only the CLI sets this; library callers
    # (Django, Celery) choose their own, see docs/models.md.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ml import evaluate
from ml.interactions import (
    FORMATS,
    Interactions,
    InvalidEventsError,
    load_events,
    parse_weights,
)
from ml.model import ModelParams, TrainedModel, fit, history_scorer, tune_l2
from ml.sequences import Sequences, build_sequences, leave_last_out


@dataclass(frozen=True)
class TrainParams:
    model: ModelParams = field(default_factory=ModelParams)
    tune: bool = True  # choose the ridge penalty on a validation split (else model.l2)
    l2_grid: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
    evaluate: bool = True  # leave-last-out table with the baselines
    ease_grid: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
    max_eval_users: int = 20_000  # test users above this are sampled (seeded) to bound the cost
    event_weights: dict[str, float] | None = None  # recorded in the model card


@dataclass(frozen=True)
class TrainResult:
    model: TrainedModel
    metrics: dict[str, dict[str, float | int] | str]  # name -> metrics, or why it was skipped
    model_card: dict[str, object]
    train_seconds: float  # tuning + final fit (what a scheduled job pays, export excluded)
    version: int | None = None
    version_dir: Path | None = None


def train(events: Interactions, params: TrainParams | None = None) -> TrainResult:
    """Evaluate (optionally) and fit the model on all events; nothing is written."""
    params = params or TrainParams()
    sequences = build_sequences(events)
    _check_trainable(sequences)
    metrics: dict[str, dict[str, float | int] | str] = {}
    model_params = params.model
    tuning: dict[str, object] = {}
    tune_seconds = eval_seconds = 0.0
    if params.evaluate:
        # The split's validation part chooses the penalty; the final fit reuses that choice.
        started = time.perf_counter()
        metrics, tuning, model_params, tune_seconds = evaluate_on_split(
            sequences, model_params, params
        )
        eval_seconds = time.perf_counter() - started - tune_seconds
    elif params.tune and _has_validation(sequences):
        started = time.perf_counter()
        best, scores = tune_l2(sequences, model_params, params.l2_grid)
        model_params = replace(model_params, l2=best)
        tuning["model_l2_validation_ndcg10"] = {str(k): round(v, 5) for k, v in scores.items()}
        tune_seconds = time.perf_counter() - started
    started = time.perf_counter()
    model = fit(sequences, model_params)
    train_seconds = time.perf_counter() - started + tune_seconds
    card: dict[str, object] = {
        "algorithm": (
            "decayed-history ridge regression on SVD item embeddings, reduced to `rank` "
            "scoring columns (ml.model)"
        ),
        "parameters": model.params,
        "event_weights": params.event_weights,
        "data": {
            "events": len(events),
            "users": sequences.n_users,
            "items": sequences.n_items,
            "distinct_user_item_pairs": int(sequences.items.shape[0]),
            "first_event": _iso(float(events.timestamps.min())),
            "last_event": _iso(float(events.timestamps.max())),
        },
        "offline_evaluation": {
            "protocol": "temporal leave-last-out, full ranking, training items excluded",
            "metrics": metrics,
            "tuning": tuning,
            "seconds": round(eval_seconds, 2),
            "chosen_l2": model_params.l2,
        },
        "training_seconds": round(train_seconds, 2),
    }
    return TrainResult(model=model, metrics=metrics, model_card=card, train_seconds=train_seconds)


def train_and_export(
    events: Interactions,
    *,
    repository: str | Path,
    name: str,
    params: TrainParams | None = None,
) -> TrainResult:
    """Train on ``events`` and export the next version to ``<repository>/<name>/<version>``."""
    from ml.export import export_model

    result = train(events, params)
    version_dir = export_model(
        result.model, repository=repository, name=name, model_card=result.model_card
    )
    return replace(result, version=int(version_dir.name), version_dir=version_dir)


def evaluate_on_split(
    sequences: Sequences, model_params: ModelParams, params: TrainParams
) -> tuple[dict[str, dict[str, float | int] | str], dict[str, object], ModelParams, float]:
    """The comparison table: model, popularity and EASE on the same leave-last-out split.

    Returns the metrics, the tuning record, the model parameters chosen on the validation part
    of the split, and the seconds that choice took.
    """
    train_part, test_users, test_items = leave_last_out(sequences)
    if test_users.shape[0] > params.max_eval_users:
        rng = np.random.default_rng(model_params.seed)
        pick = np.sort(rng.choice(test_users.shape[0], params.max_eval_users, replace=False))
        test_users, test_items = test_users[pick], test_items[pick]
    tuning: dict[str, object] = {}
    chosen = model_params
    tune_seconds = 0.0
    if params.tune and _has_validation(train_part):
        started = time.perf_counter()
        best, scores = tune_l2(train_part, model_params, params.l2_grid)
        chosen = replace(model_params, l2=best)
        tuning["model_l2_validation_ndcg10"] = {str(k): round(v, 5) for k, v in scores.items()}
        tune_seconds = time.perf_counter() - started
    if test_users.shape[0] == 0:
        reason = "skipped: no user has two distinct items"
        return {"model": reason, "popularity": reason, "ease": reason}, tuning, chosen, 0.0
    model = fit(train_part, chosen)
    metrics: dict[str, dict[str, float | int] | str] = {}
    ranks = {
        "model": evaluate.held_out_ranks(
            history_scorer(model, train_part), train_part, test_users, test_items
        ),
        "popularity": evaluate.held_out_ranks(
            evaluate.popularity_scorer(train_part), train_part, test_users, test_items
        ),
    }
    if not evaluate.Ease.feasible(train_part):
        metrics["ease"] = f"skipped: more than {evaluate.EASE_MAX_ITEMS} users and items"
    else:
        l2 = 100.0
        if _has_validation(train_part):
            l2, ease_scores = evaluate.tune_ease(train_part, params.ease_grid)
            tuning["ease_l2_validation_ndcg10"] = {
                str(k): round(v, 5) for k, v in ease_scores.items()
            }
        tuning["ease_l2"] = l2
        ranks["ease"] = evaluate.held_out_ranks(
            evaluate.Ease(train_part, l2), train_part, test_users, test_items
        )
    for name, values in ranks.items():
        metrics[name] = evaluate.Metrics.from_ranks(values).to_dict()
    tuning["model_minus_baseline_95ci"] = {
        name: evaluate.paired_bootstrap(ranks["model"], values)
        for name, values in ranks.items()
        if name != "model"
    }
    return (
        dict(sorted(metrics.items(), key=lambda kv: ORDER.index(kv[0]))),
        tuning,
        chosen,
        tune_seconds,
    )


ORDER = ("model", "popularity", "ease")


def format_table(metrics: dict[str, dict[str, float | int] | str]) -> str:
    lines = [f"{'model':<12}{'HR@10':>10}{'NDCG@10':>10}{'Recall@20':>11}{'users':>8}"]
    for name, row in metrics.items():
        if isinstance(row, str):
            lines.append(f"{name:<12}{row}")
            continue
        lines.append(
            f"{name:<12}{row['hr@10']:>10.4f}{row['ndcg@10']:>10.4f}"
            f"{row['recall@20']:>11.4f}{row['users']:>8}"
        )
    return "\n".join(lines)


def _check_trainable(sequences: Sequences) -> None:
    if sequences.n_items < 2:
        raise InvalidEventsError(
            f"a catalog of one item ({sequences.item_vocab[0]}): nothing to rank, need >= 2 items"
        )
    if sequences.n_users < 2:
        raise InvalidEventsError(
            f"events from a single user ({sequences.user_vocab[0]}): need >= 2 users to learn "
            "anything beyond that user's own history"
        )


def _has_validation(sequences: Sequences) -> bool:
    """Enough users keep an item to validate on after another one is held out."""
    return int(np.sum(sequences.lengths >= 3)) >= 2


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml.train", description="Train, evaluate and export a recommender."
    )
    parser.add_argument("--events", type=Path, required=True, help="events file")
    parser.add_argument("--format", choices=FORMATS, default=None, help="default: by extension")
    parser.add_argument("--weights", default=None, help="event weights, e.g. view=1,purchase=8")
    parser.add_argument("--repository", type=Path, default=Path("var/models"))
    parser.add_argument("--name", default="recommender")
    parser.add_argument("--evaluate-only", action="store_true", help="print the table, no export")
    parser.add_argument("--no-evaluate", action="store_true", help="skip the comparison table")
    parser.add_argument("--no-tune", action="store_true", help="use --l2 instead of tuning it")
    parser.add_argument("--dim", type=int, default=ModelParams.dim)
    parser.add_argument(
        "--decays",
        default=",".join(str(d) for d in ModelParams.decays),
        help="recency decays per history step, comma separated",
    )
    parser.add_argument("--l2", type=float, default=ModelParams.l2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    fmt = args.format or ("jsonl" if args.events.suffix in (".jsonl", ".json") else "csv")
    try:
        decays = tuple(float(d) for d in args.decays.split(",") if d.strip())
        if not decays or any(not 0 < d <= 1 for d in decays):
            raise InvalidEventsError("--decays: numbers in (0, 1], comma separated")
        if args.dim < 1:
            raise InvalidEventsError("--dim must be >= 1")
        weights = parse_weights(args.weights)
        started = time.perf_counter()
        events = load_events(args.events, format=fmt, weights=weights)
        print(f"read {len(events)} interactions in {time.perf_counter() - started:.1f}s")
        params = TrainParams(
            model=ModelParams(dim=args.dim, decays=decays, l2=args.l2, seed=args.seed),
            tune=not args.no_tune,
            evaluate=not args.no_evaluate,
            event_weights=weights,
        )
        if args.evaluate_only:
            result = train(events, params)
        else:
            result = train_and_export(
                events, repository=args.repository, name=args.name, params=params
            )
    except InvalidEventsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    data = result.model_card["data"]
    print(
        f"trained on {data['users']} users, {data['items']} items "  # type: ignore[index]
        f"in {result.train_seconds:.1f}s"
    )
    if result.metrics:
        print(format_table(result.metrics))
        tuning = result.model_card["offline_evaluation"]["tuning"]  # type: ignore[index]
        chosen = f"model l2={result.model.params['l2']:g}"
        if "ease_l2" in tuning:
            chosen += f", EASE lambda={tuning['ease_l2']:g}"
        print(f"chosen on a validation split of the training part: {chosen}")
        for name, intervals in tuning.get("model_minus_baseline_95ci", {}).items():
            shown = ", ".join(f"{m} [{lo:+.4f}, {hi:+.4f}]" for m, (lo, hi) in intervals.items())
            print(f"model - {name}, paired bootstrap 95% interval: {shown}")
    if result.version_dir is not None:
        print(f"exported version {result.version} -> {result.version_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
