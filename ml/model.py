"""The recommendation model: recency-decayed history regression on item embeddings.

How it scores (the same arithmetic runs in numpy here and in the exported SavedModel):

1. Every item has an *input* embedding ``V[i]`` (``dim`` floats), the top singular vectors of the
   user x item interaction matrix.
2. A history (item ids, event weights, oldest first) becomes one feature block per recency decay
   ``g`` in ``decays``: ``f_g = sum_j w_j g**age_j V[i_j] / (sum_j w_j g**age_j) ** norm_power``
   where ``age_j`` counts the newer history entries. ``g = 1`` is long-term taste, a small ``g``
   is "what the shopper is looking at right now". A constant 1 is appended (item bias).
3. ``W`` (``len(decays) * dim + 1`` floats per item) is fitted in closed form (ridge regression)
   to predict each next item of every training sequence from the history ``f`` before it.
4. Serving compresses ``W`` to ``rank`` (default ``dim``) columns: ``W ~ E P^T`` with the best
   rank-``rank`` approximation *in the norm of the training queries* (the weighted SVD of
   ``W G^1/2``, ``G`` the regularised gram matrix of the features, i.e. reduced-rank ridge
   regression). The decay blocks fold into the query: ``q = P^T f`` (``rank`` floats) and
   ``scores = E q``, so a request scores exactly ``rank`` columns per item.

Fitting costs one randomized SVD plus one pass over the training positions; no n_items^2 matrix
is ever built, so it scales to large catalogs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from ml.sequences import Sequences


@dataclass(frozen=True)
class ModelParams:
    dim: int = 64  # size of the input embeddings (SVD rank)
    decays: tuple[float, ...] = (1.0, 0.9, 0.5)  # recency decay per history step, one block each
    norm_power: float = 0.5  # 0: plain sums, 1: weighted means
    l2: float = 10.0  # ridge penalty on the output embeddings
    rank: int | None = None  # scoring columns per item (None: dim); the query folds the rest
    user_balance: float = 0.5  # training positions weigh length(user) ** -user_balance
    svd_oversample: int = 16
    svd_iterations: int = 3
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["decays"] = list(self.decays)
        return data


@dataclass(frozen=True)
class TrainedModel:
    """Everything the export needs: the vocabulary and the arrays of the scoring function."""

    item_ids: np.ndarray  # external ids (object/str), index order
    input_embeddings: np.ndarray  # float32 (n_items, dim)
    output_embeddings: np.ndarray  # float32 (n_items, rank): the scoring columns E
    query_projection: np.ndarray  # float32 (len(decays) * dim + 1, rank): P, features -> query
    popularity: np.ndarray  # float32 (n_items,), users per item in the training data
    decays: tuple[float, ...]
    norm_power: float
    params: dict[str, object] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def rank(self) -> int:
        return int(self.output_embeddings.shape[1])

    def features(self, offsets: np.ndarray, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """History features for CSR-stored histories (oldest first), shape (n_rows, features)."""
        return history_features(
            self.input_embeddings, offsets, items, weights, self.decays, self.norm_power
        )

    def query(self, offsets: np.ndarray, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Query vectors (n_rows, rank): the features projected by ``P``."""
        return self.features(offsets, items, weights) @ self.query_projection

    def scores(self, queries: np.ndarray) -> np.ndarray:
        return queries @ self.output_embeddings.T


def history_features(
    embeddings: np.ndarray,
    offsets: np.ndarray,
    items: np.ndarray,
    weights: np.ndarray,
    decays: tuple[float, ...],
    norm_power: float,
) -> np.ndarray:
    """The feature vector of each history (see the module docstring), bias column last."""
    n_rows = offsets.shape[0] - 1
    lengths = np.diff(offsets)
    dim = embeddings.shape[1]
    out = np.zeros((n_rows, len(decays) * dim + 1), dtype=np.float32)
    out[:, -1] = 1.0
    if items.shape[0] == 0:
        return out
    row = np.repeat(np.arange(n_rows), lengths)
    age = (
        np.repeat(lengths, lengths)
        - 1
        - (np.arange(items.shape[0]) - np.repeat(offsets[:-1], lengths))
    )
    for block, decay in enumerate(decays):
        factor = (weights * np.power(decay, age)).astype(np.float32)
        total = np.bincount(row, weights=factor, minlength=n_rows)
        summed = segment_sum(embeddings[items] * factor[:, None], row, n_rows)
        scale = np.power(np.maximum(total, 1e-12), -norm_power).astype(np.float32)
        scale[total <= 0] = 0.0
        out[:, block * dim : (block + 1) * dim] = summed * scale[:, None]
    return out


def fit(train: Sequences, params: ModelParams | None = None) -> TrainedModel:
    """Fit the model on de-duplicated, time-ordered training sequences."""
    params = params or ModelParams()
    stats = _Statistics.collect(train, params)
    return stats.solve(params.l2)


def tune_l2(
    train: Sequences,
    params: ModelParams,
    grid: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0),
    *,
    max_users: int = 5000,
) -> tuple[float, dict[float, float]]:
    """Pick the ridge penalty by NDCG@10 on a leave-last-out validation split of ``train``."""
    from ml.evaluate import evaluate_scorer
    from ml.sequences import leave_last_out

    fit_part, val_users, val_items = leave_last_out(train)
    if val_users.shape[0] > max_users:  # a deterministic sample keeps tuning cheap
        pick = np.sort(
            np.random.default_rng(params.seed).choice(val_users.shape[0], max_users, replace=False)
        )
        val_users, val_items = val_users[pick], val_items[pick]
    stats = _Statistics.collect(fit_part, params)
    results = {}
    for l2 in grid:
        scorer = history_scorer(stats.solve(l2), fit_part)
        results[l2] = evaluate_scorer(scorer, fit_part, val_users, val_items).ndcg10
    return max(results, key=lambda l2: results[l2]), results


def history_scorer(model: TrainedModel, train: Sequences) -> Callable[[np.ndarray], np.ndarray]:
    """An evaluation scorer: users -> scores of their training histories."""

    def score(users: np.ndarray) -> np.ndarray:
        return model.scores(model.query(*train.histories(users)))

    return score


@dataclass
class _Statistics:
    """Sufficient statistics of the ridge regression (so several penalties cost one pass)."""

    train: Sequences
    params: ModelParams
    basis: np.ndarray
    gram: np.ndarray
    cross: np.ndarray

    @classmethod
    def collect(cls, train: Sequences, params: ModelParams) -> _Statistics:
        n_items = train.n_items
        dim = min(params.dim, max(1, n_items - 1), max(1, train.n_users))
        basis = item_basis(train, dim, params)
        features = len(params.decays) * dim + 1
        gram = np.zeros((features, features), dtype=np.float64)
        cross = np.zeros((n_items, features), dtype=np.float64)
        for z, targets, weight in _training_positions(train, basis, params):
            weighted = z * weight[:, None]
            gram += (weighted.T @ z).astype(np.float64)
            cross += segment_sum(weighted, targets, n_items)
        return cls(train, params, basis, gram, cross)

    def solve(self, l2: float) -> TrainedModel:
        features = self.gram.shape[0]
        penalty = np.full(features, l2)
        penalty[-1] = 1e-6  # leave the bias (popularity) nearly free
        regularised = self.gram + np.diag(penalty)
        output = np.linalg.solve(regularised, self.cross.T).T
        rank = self.params.rank or self.basis.shape[1]
        embeddings, projection = compress(output, regularised, rank)
        popularity = np.bincount(self.train.items, minlength=self.train.n_items).astype(np.float32)
        return TrainedModel(
            item_ids=self.train.item_vocab,
            input_embeddings=self.basis,
            output_embeddings=embeddings,
            query_projection=projection,
            popularity=popularity,
            decays=tuple(self.params.decays),
            norm_power=self.params.norm_power,
            params={**self.params.to_dict(), "dim": self.basis.shape[1], "rank": rank, "l2": l2},
        )


def compress(output: np.ndarray, gram: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``output ~ E @ P.T`` with ``E`` (n_items, rank), ``P`` (features, rank).

    The approximation is the best of its rank for the scores of queries distributed like the
    training features: it minimises ``||(output - E P^T) G^1/2||_F`` (``G`` = feature gram), via
    the top right singular vectors of ``output G^1/2``. Only features x features matrices are
    decomposed, so the cost is one pass over ``output``.
    """
    features = gram.shape[0]
    values, vectors = np.linalg.eigh((gram + gram.T) / 2.0)
    values = np.maximum(values, max(float(values.max()), 1e-12) * 1e-10)
    root = (vectors * np.sqrt(values)) @ vectors.T
    inverse_root = (vectors / np.sqrt(values)) @ vectors.T
    weighted = output @ root  # (n_items, features)
    _, right = np.linalg.eigh(weighted.T @ weighted)
    top = right[:, ::-1][:, : min(rank, features)]
    if top.shape[1] < rank:  # fewer features than the rank: pad with zero columns
        top = np.pad(top, ((0, 0), (0, rank - top.shape[1])))
    embeddings = np.ascontiguousarray((weighted @ top).astype(np.float32))
    projection = np.ascontiguousarray((inverse_root @ top).astype(np.float32))
    return embeddings, projection


def item_basis(train: Sequences, dim: int, params: ModelParams) -> np.ndarray:
    """Top ``dim`` right singular vectors of the binary user x item matrix (randomized SVD)."""
    rng = np.random.default_rng(params.seed)
    rows = train.user_of_entry  # sorted
    cols = train.items.astype(np.int64)
    n_users, n_items = train.n_users, train.n_items
    rank = min(dim + params.svd_oversample, n_items, max(n_users, 1))

    def times(matrix: np.ndarray) -> np.ndarray:  # X @ matrix, (n_users, r)
        return gather_sum(matrix, cols, rows, n_users)

    def times_transposed(matrix: np.ndarray) -> np.ndarray:  # X.T @ matrix, (n_items, r)
        return gather_sum(matrix, rows, cols, n_items)

    sketch = times(rng.standard_normal((n_items, rank)).astype(np.float32))
    for _ in range(params.svd_iterations):
        sketch, _ = np.linalg.qr(sketch)
        sketch, _ = np.linalg.qr(times_transposed(sketch))
        sketch = times(sketch)
    sketch, _ = np.linalg.qr(sketch)
    small = times_transposed(sketch).T  # (r, n_items) = Q^T X
    _, _, vt = np.linalg.svd(small, full_matrices=False)
    basis = vt[:dim].T.astype(np.float32)
    if basis.shape[1] < dim:
        basis = np.pad(basis, ((0, 0), (0, dim - basis.shape[1])))
    return np.ascontiguousarray(basis)


def _training_positions(
    train: Sequences, basis: np.ndarray, params: ModelParams, chunk: int = 65536
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (features of the history before position t, item at t) for every position.

    Walks all users in lock-step over positions, keeping the decayed sums as running state, so the
    cost is one embedding add per entry and block.
    """
    lengths = train.lengths
    order = np.argsort(-lengths, kind="stable")  # longest first: active users are a prefix
    sorted_lengths = lengths[order]
    starts = train.offsets[:-1][order]
    dim = basis.shape[1]
    n_blocks = len(params.decays)
    decays = np.asarray(params.decays, dtype=np.float32)
    max_len = int(sorted_lengths[0]) if sorted_lengths.size else 0
    state = np.zeros((n_blocks, order.shape[0], dim), dtype=np.float32)
    total = np.zeros((n_blocks, order.shape[0]), dtype=np.float32)
    pending_z: list[np.ndarray] = []
    pending_t: list[np.ndarray] = []
    pending_w: list[np.ndarray] = []
    # Each position counts length ** -user_balance: 1 lets every user weigh the same in total
    # (as in the per-user evaluation), 0 lets heavy users dominate.
    user_weight = np.power(np.maximum(sorted_lengths, 1), -params.user_balance).astype(np.float32)
    pending = 0
    for t in range(max_len):
        active = _count_longer(sorted_lengths, t)
        entries = starts[:active] + t
        items = train.items[entries]
        z = np.empty((active, n_blocks * dim + 1), dtype=np.float32)
        z[:, -1] = 1.0
        for b in range(n_blocks):
            tot = total[b, :active]
            scale = np.where(tot > 0, np.power(np.maximum(tot, 1e-12), -params.norm_power), 0.0)
            z[:, b * dim : (b + 1) * dim] = state[b, :active] * scale[:, None]
        pending_z.append(z)
        pending_t.append(items)
        pending_w.append(user_weight[:active])
        pending += active
        if pending >= chunk:
            yield np.concatenate(pending_z), np.concatenate(pending_t), np.concatenate(pending_w)
            pending_z, pending_t, pending_w, pending = [], [], [], 0
        w = train.weights[entries]
        vectors = basis[items] * w[:, None]
        for b in range(n_blocks):
            state[b, :active] = state[b, :active] * decays[b] + vectors
            total[b, :active] = total[b, :active] * decays[b] + w
    if pending:
        yield np.concatenate(pending_z), np.concatenate(pending_t), np.concatenate(pending_w)


def segment_sum(values: np.ndarray, segments: np.ndarray, n_segments: int) -> np.ndarray:
    """Rows of ``values`` (2-D) summed by ``segments`` -> (n_segments, columns).

    One ``bincount`` per column: much faster than ``np.add.at`` or a 2-D ``reduceat`` over many
    short segments, and no sorting needed.
    """
    columns = np.ascontiguousarray(values.T)
    out = np.empty((values.shape[1], n_segments), dtype=values.dtype)
    for column in range(columns.shape[0]):
        out[column] = np.bincount(segments, weights=columns[column], minlength=n_segments)
    return out.T


def gather_sum(matrix: np.ndarray, rows: np.ndarray, segments: np.ndarray, n: int) -> np.ndarray:
    """``segment_sum(matrix[rows], segments, n)`` without materialising the row-major gather."""
    columns = np.ascontiguousarray(matrix.T)
    out = np.empty((matrix.shape[1], n), dtype=matrix.dtype)
    for column in range(columns.shape[0]):
        out[column] = np.bincount(segments, weights=columns[column][rows], minlength=n)
    return np.ascontiguousarray(out.T)


def _count_longer(sorted_desc: np.ndarray, t: int) -> int:
    """Number of sequences longer than ``t`` in a descending array of lengths."""
    return int(np.searchsorted(-sorted_desc, -t, side="left"))
