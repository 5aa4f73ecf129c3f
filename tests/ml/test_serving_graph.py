"""The compressed model and the exported graph's fast paths (blocked top-k, padding, exclusion)."""

import numpy as np
import pytest

from ml.bench_model import random_model
from ml.model import ModelParams, compress, fit
from ml.sequences import build_sequences
from ml.synthetic import generate_storefront


def test_compression_is_exact_at_full_rank_and_best_in_the_query_norm():
    rng = np.random.default_rng(0)
    output = rng.standard_normal((300, 12))
    mixing = rng.standard_normal((12, 12))
    gram = mixing @ mixing.T + np.eye(12)

    embeddings, projection = compress(output, gram, 12)
    np.testing.assert_allclose(embeddings @ projection.T, output, rtol=1e-3, atol=1e-3)

    def query_error(approximation):
        root = np.linalg.cholesky(gram)
        return np.linalg.norm((output - approximation) @ root)

    embeddings, projection = compress(output, gram, 4)
    u, s, vt = np.linalg.svd(output, full_matrices=False)
    plain = (u[:, :4] * s[:4]) @ vt[:4]
    assert embeddings.shape == (300, 4) and projection.shape == (12, 4)
    assert query_error(embeddings @ projection.T) <= query_error(plain) + 1e-6


def test_trained_model_scores_with_exactly_dim_columns():
    shop = generate_storefront(n_users=150, n_items=90, n_events=6_000, seed=3)
    sequences = build_sequences(shop.interactions())

    model = fit(sequences, ModelParams(dim=8, decays=(1.0, 0.9, 0.5)))

    assert model.output_embeddings.shape == (model.n_items, 8)
    assert model.query_projection.shape == (3 * 8 + 1, 8)
    offsets, items, weights = sequences.histories(np.arange(4))
    features = model.features(offsets, items, weights)
    assert features.shape == (4, 25)
    np.testing.assert_allclose(
        model.scores(model.query(offsets, items, weights)),
        features @ model.query_projection @ model.output_embeddings.T,
        rtol=1e-5,
    )


tf = pytest.importorskip("tensorflow")

from ml.export import ServingModule  # noqa: E402


@pytest.fixture(scope="module", params=[1_001, 1_024])
def modules(request):
    # 1,001 items: the last block is partly padding; 1,024: the last block is all padding
    model = random_model(request.param, 8, (1.0, 0.5), seed=2)
    return model, ServingModule(model, block=16), ServingModule(model, block=0)


def _expected(model, history, weights, k):
    """Numpy reference: scores, history excluded, full sort (fine at test size)."""
    pairs = [(i, w) for i, w in zip(history, weights, strict=True) if i >= 0 and w > 0]
    if not pairs:
        order = np.argsort(-model.popularity, kind="stable")[: min(k, model.n_items)]
        return [str(model.item_ids[i]) for i in order]
    items = np.array([i for i, _ in pairs])
    query = model.query(
        np.array([0, len(pairs)]), items, np.array([w for _, w in pairs], np.float32)
    )
    scores = model.scores(query)[0]
    scores[items] = -np.inf
    order = np.argsort(-scores, kind="stable")[: min(k, model.n_items)]
    return [str(model.item_ids[i]) if np.isfinite(scores[i]) else "" for i in order]


@pytest.mark.parametrize("k", [0, 1, 7, 20, 600, 1_001, 1_024, 5_000])
def test_blocked_top_k_equals_the_full_ranking(modules, k):
    model, blocked, plain = modules
    histories = [[3, model.n_items - 1, 17, -1], [-1, -1, -1, -1], [999, 999, 2, 64]]
    weights = [[1.0, 2.0, 8.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 4.0, 0.0]]
    ids = [[str(model.item_ids[i]) if i >= 0 else "" for i in row] for row in histories]

    results = [
        module.recommend(
            history=tf.constant(ids), history_weights=tf.constant(weights), k=tf.constant(k)
        )
        for module in (blocked, plain)
    ]

    # Equal scores may come in either order: compare scores, and the ids as sets.
    decoded = [[[v.decode() for v in row] for row in r["item_ids"].numpy()] for r in results]
    scores = results[0]["scores"].numpy()
    np.testing.assert_allclose(scores, results[1]["scores"].numpy(), rtol=1e-5)
    for fast, slow, history, weight, row in zip(*decoded, histories, weights, scores, strict=True):
        assert np.all(np.diff(row[np.array(fast, dtype=object) != ""]) <= 0)
        expected = _expected(model, history, weight, k)
        assert len(fast) == len(expected) and set(fast) == set(slow) == set(expected)
        assert fast.count("") == expected.count("")
    assert not {f"item-{model.n_items - 1}", "item-3", "item-17"} & set(decoded[0][0])


def test_similar_through_the_blocked_path(modules):
    model, blocked, plain = modules
    last = f"item-{model.n_items - 1}"
    request = {"item_ids": tf.constant([last, "nope", "item-5"]), "k": tf.constant(9)}

    fast, slow = blocked.similar(**request), plain.similar(**request)

    assert fast["item_ids"].numpy().tolist() == slow["item_ids"].numpy().tolist()
    ids = [v.decode() for v in fast["item_ids"].numpy()[0]]
    assert last not in ids and "" not in ids
    assert fast["item_ids"].numpy()[1].tolist() == [b""] * 9
    expected = _expected(model, [model.n_items - 1], [1.0], 9)
    assert ids == expected
