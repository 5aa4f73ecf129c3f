"""Offline evaluation: temporal leave-last-out, full ranking, HR / NDCG / Recall, two baselines.

Protocol (pure numpy):

- per user, the most recent distinct item is the test item (``ml.sequences.leave_last_out``);
  users with a single item only train;
- every model ranks *all* items (no sampled negatives), with the user's training items removed;
- the rank of the test item is pessimistic: items with an equal score count as ranked ahead;
- hyper-parameters (EASE's lambda, the model's ridge penalty) are chosen on a validation split cut
  the same way from the training data, never on the test items.

With one held-out item per user, Recall@k equals HR@k; both are printed because they stop being
equal as soon as more than one item per user is held out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ml.sequences import Sequences

Scorer = Callable[[np.ndarray], np.ndarray]  # user indices -> (n, n_items) scores

EASE_MAX_ITEMS = 6_000  # EASE inverts a min(users, items)^2 matrix; above this it is skipped


def hit_rate_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of users whose held-out item is in the top k (``ranks`` are 0-based)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(ranks < k)) if ranks.size else 0.0


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean NDCG@k with one relevant item per user: ``1 / log2(rank + 2)`` inside the top k."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if not ranks.size:
        return 0.0
    gains = np.where(ranks < k, 1.0 / np.log2(np.minimum(ranks, k) + 2.0), 0.0)
    return float(np.mean(gains))


def recall_at_k(
    ranked: list[list[object]] | np.ndarray, relevant: list[set[object]], k: int
) -> float:
    """Mean over users of |top-k of ``ranked`` that is relevant| / |relevant| (users with an
    empty relevant set are skipped)."""
    values = []
    for row, wanted in zip(ranked, relevant, strict=True):
        if not wanted:
            continue
        top = list(row)[:k]
        values.append(len(wanted.intersection(top)) / len(wanted))
    return float(np.mean(values)) if values else 0.0


def held_out_ranks(
    scorer: Scorer,
    train: Sequences,
    test_users: np.ndarray,
    test_items: np.ndarray,
    *,
    batch: int = 512,
) -> np.ndarray:
    """0-based rank of each user's test item among all items minus the user's training items."""
    ranks = np.empty(test_users.shape[0], dtype=np.int64)
    for start in range(0, test_users.shape[0], batch):
        users = test_users[start : start + batch]
        targets = test_items[start : start + batch]
        scores = np.array(scorer(users), dtype=np.float32, copy=True)
        lengths = train.lengths[users]
        rows = np.repeat(np.arange(users.shape[0]), lengths)
        seen = train.items[train.entries_of(users)]
        scores[rows, seen] = -np.inf
        target_scores = scores[np.arange(users.shape[0]), targets]
        ahead = (scores >= target_scores[:, None]).sum(axis=1) - 1  # minus the item itself
        ranks[start : start + batch] = np.where(np.isfinite(target_scores), ahead, train.n_items)
    return ranks


@dataclass(frozen=True)
class Metrics:
    hr10: float
    ndcg10: float
    recall20: float
    users: int

    @classmethod
    def from_ranks(cls, ranks: np.ndarray) -> Metrics:
        return cls(
            hr10=hit_rate_at_k(ranks, 10),
            ndcg10=ndcg_at_k(ranks, 10),
            recall20=hit_rate_at_k(ranks, 20),  # one held-out item: Recall@20 == HR@20
            users=int(ranks.shape[0]),
        )

    def to_dict(self) -> dict[str, float | int]:
        return {
            "hr@10": round(self.hr10, 5),
            "ndcg@10": round(self.ndcg10, 5),
            "recall@20": round(self.recall20, 5),
            "users": self.users,
        }


def evaluate_scorer(
    scorer: Scorer, train: Sequences, test_users: np.ndarray, test_items: np.ndarray
) -> Metrics:
    return Metrics.from_ranks(held_out_ranks(scorer, train, test_users, test_items))


def paired_bootstrap(
    ranks_a: np.ndarray, ranks_b: np.ndarray, *, k: int = 10, samples: int = 2000, seed: int = 0
) -> dict[str, list[float]]:
    """95% bootstrap intervals of the per-user differences a - b in HR@k and NDCG@k.

    Users are resampled together for both models (paired), so the interval reflects how much the
    conclusion depends on which users happen to be in the test set.
    """
    ranks_a, ranks_b = np.asarray(ranks_a, float), np.asarray(ranks_b, float)
    hit = (ranks_a < k).astype(float) - (ranks_b < k).astype(float)

    def gain(ranks: np.ndarray) -> np.ndarray:
        return np.where(ranks < k, 1.0 / np.log2(np.minimum(ranks, k) + 2.0), 0.0)

    ndcg = gain(ranks_a) - gain(ranks_b)
    rng = np.random.default_rng(seed)
    means: dict[str, list[np.ndarray]] = {f"hr@{k}": [], f"ndcg@{k}": []}
    for start in range(0, samples, 100):  # chunks keep memory at 100 x n_users
        picks = rng.integers(0, hit.shape[0], (min(100, samples - start), hit.shape[0]))
        means[f"hr@{k}"].append(hit[picks].mean(axis=1))
        means[f"ndcg@{k}"].append(ndcg[picks].mean(axis=1))
    out = {}
    for name, chunks in means.items():
        values = np.concatenate(chunks)
        out[name] = [
            round(float(np.percentile(values, 2.5)), 5),
            round(float(np.percentile(values, 97.5)), 5),
        ]
    return out


# Baselines ---------------------------------------------------------------------------------------


def popularity_scorer(train: Sequences) -> Scorer:
    """Items ranked by how many training users interacted with them."""
    counts = np.bincount(train.items, minlength=train.n_items).astype(np.float32)
    # a tiny deterministic tie-break so equal counts do not all tie pessimistically
    counts += np.linspace(0.0, 0.5, train.n_items, dtype=np.float32)[::-1]

    def score(users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(counts, (users.shape[0], train.n_items))

    return score


class Ease:
    """EASE (Steck 2019) on the binary user x item matrix X.

    ``B = I - P / diag(P)`` with ``P = (X^T X + l2 I)^-1``. When there are fewer users than items,
    ``P`` is applied through the Woodbury identity, ``P = (I - X^T (X X^T + l2 I)^-1 X) / l2``,
    so only an n_users^2 matrix is inverted and B is never formed. Otherwise the n_items^2 Gram
    matrix is inverted directly (skipped above ``EASE_MAX_ITEMS``).
    """

    def __init__(self, train: Sequences, l2: float) -> None:
        self.train = train
        self.l2 = l2
        self.dual = train.n_users < train.n_items
        if self.dual:
            rows = user_rows(train, np.arange(train.n_users)).astype(np.float64)
            kernel = np.linalg.inv(rows @ rows.T + l2 * np.eye(train.n_users))
            self._rows = rows
            self._kernel_rows = kernel @ rows  # K X, (n_users, n_items)
            self._diag = (1.0 - np.einsum("ui,ui->i", rows, self._kernel_rows)) / l2
        else:
            gram = item_gram(train)
            gram[np.diag_indices_from(gram)] += l2
            self._inverse = np.linalg.inv(gram)
            self._diag = np.diag(self._inverse).copy()

    def __call__(self, users: np.ndarray) -> np.ndarray:
        x = user_rows(self.train, users).astype(np.float64)
        if self.dual:
            xp = (x - (x @ self._rows.T) @ self._kernel_rows) / self.l2
        else:
            xp = x @ self._inverse
        # x B = x - (x P) / diag(P); the x term only touches the user's own (excluded) items
        return (-(xp / self._diag)).astype(np.float32)

    @staticmethod
    def feasible(train: Sequences) -> bool:
        return min(train.n_users, train.n_items) <= EASE_MAX_ITEMS


def tune_ease(
    train: Sequences,
    grid: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0),
    *,
    max_users: int = 5000,
) -> tuple[float, dict[float, float]]:
    """Pick EASE's lambda by NDCG@10 on a leave-last-out validation split of ``train``.

    Returns the best lambda and the validation NDCG@10 of every candidate.
    """
    from ml.sequences import leave_last_out

    fit_part, val_users, val_items = leave_last_out(train)
    if val_users.shape[0] > max_users:  # a seeded sample keeps tuning affordable
        pick = np.sort(
            np.random.default_rng(0).choice(val_users.shape[0], max_users, replace=False)
        )
        val_users, val_items = val_users[pick], val_items[pick]
    results = {
        l2: evaluate_scorer(Ease(fit_part, l2), fit_part, val_users, val_items).ndcg10
        for l2 in grid
    }
    return max(results, key=lambda l2: results[l2]), results


def item_gram(train: Sequences, chunk: int = 2048) -> np.ndarray:
    """X^T X for the binary user x item matrix, built in user chunks (float64)."""
    gram = np.zeros((train.n_items, train.n_items), dtype=np.float64)
    for start in range(0, train.n_users, chunk):
        rows = user_rows(train, np.arange(start, min(start + chunk, train.n_users)))
        gram += rows.T.astype(np.float64) @ rows
    return gram


def user_rows(train: Sequences, users: np.ndarray) -> np.ndarray:
    """Dense binary interaction rows for the given users."""
    rows = np.zeros((users.shape[0], train.n_items), dtype=np.float32)
    lengths = train.lengths[users]
    rows[np.repeat(np.arange(users.shape[0]), lengths), train.items[train.entries_of(users)]] = 1
    return rows
