"""The checks that need TensorFlow: load a SavedModel, ask it for recommendations on sample
histories, and replay recent shoppers through it (offline evaluation).

Runs in the Celery worker or the `push_model` command, never in a web process: TensorFlow is
imported inside the functions. Inputs are plain lists, so this module needs no database.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMOKE_K = 10
EVAL_K = 10
_BATCH = 256


@dataclass(frozen=True)
class EvalCase:
    history: tuple[str, ...]  # item ids, oldest first
    weights: tuple[float, ...]
    target: str  # the item the shopper went to next


class ModelLoadFailed(ValueError):
    pass


def load(saved_model_dir: str | Path) -> Any:
    import tensorflow as tf

    try:
        return tf.saved_model.load(str(saved_model_dir))
    except Exception as error:  # any load failure is a finding about the pushed model
        raise ModelLoadFailed(
            f"the SavedModel does not load: {type(error).__name__}: {error}"
        ) from None


def _recommend(loaded: Any, histories: Sequence[Sequence[str]], weights, k: int):
    import numpy as np
    import tensorflow as tf

    width = max(1, max((len(h) for h in histories), default=1))
    ids = np.full((len(histories), width), "", dtype=object)
    values = np.zeros((len(histories), width), dtype=np.float32)
    for row, (history, row_weights) in enumerate(zip(histories, weights, strict=True)):
        ids[row, : len(history)] = list(history)
        values[row, : len(history)] = list(row_weights)
    outputs = loaded.signatures["recommend"](
        history=tf.constant(ids.astype(str), dtype=tf.string),
        history_weights=tf.constant(values),
        k=tf.constant(k, dtype=tf.int32),
    )
    return outputs["item_ids"].numpy(), outputs["scores"].numpy()


def smoke_test(loaded: Any, histories: Sequence[Sequence[str]]) -> list[str]:
    """Problems found asking the model for SMOKE_K items for each history, and for the items
    similar to the first known item (empty: it answers as the contract says)."""
    import numpy as np
    import tensorflow as tf

    problems: list[str] = []
    cases = [list(history) for history in histories] + [["registry-smoke-unknown-item"]]
    try:
        item_ids, scores = _recommend(
            loaded, cases, [[1.0] * len(history) for history in cases], SMOKE_K
        )
    except Exception as error:
        return [f"recommend failed on sample histories: {type(error).__name__}: {error}"]
    if item_ids.shape[0] != len(cases) or scores.shape != item_ids.shape:
        problems.append(
            f"recommend answered shapes {item_ids.shape} and {scores.shape} for {len(cases)} "
            "histories"
        )
    elif item_ids.shape[1] > SMOKE_K:
        problems.append(f"recommend answered {item_ids.shape[1]} items for k={SMOKE_K}")
    elif not np.all(np.isfinite(scores)):
        problems.append("recommend answered non-finite scores")
    first_item = next((item for history in histories for item in history), "")
    try:
        outputs = loaded.signatures["similar"](
            item_ids=tf.constant([first_item or "registry-smoke-unknown-item"]),
            k=tf.constant(SMOKE_K, dtype=tf.int32),
        )
        similar = outputs["item_ids"].numpy()
        if similar.shape[0] != 1:
            problems.append(f"similar answered {similar.shape[0]} rows for one item")
    except Exception as error:
        problems.append(f"similar failed: {type(error).__name__}: {error}")
    return problems


def evaluate(loaded: Any, cases: Sequence[EvalCase], k: int = EVAL_K) -> dict[str, float]:
    """HR@k and NDCG@k of the held-out items (full ranking, inside the model)."""
    hits = 0.0
    gains = 0.0
    for start in range(0, len(cases), _BATCH):
        batch = cases[start : start + _BATCH]
        item_ids, _ = _recommend(loaded, [c.history for c in batch], [c.weights for c in batch], k)
        for case, row in zip(batch, item_ids, strict=True):
            ranked = [value.decode() if isinstance(value, bytes) else str(value) for value in row]
            if case.target in ranked:
                rank = ranked.index(case.target)
                hits += 1
                gains += 1.0 / math.log2(rank + 2)
    users = len(cases)
    return {
        f"hr@{k}": hits / users if users else 0.0,
        f"ndcg@{k}": gains / users if users else 0.0,
        "users": users,
    }
