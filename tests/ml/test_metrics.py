import numpy as np
import pytest

from ml import evaluate
from ml.interactions import interactions_from_events
from ml.sequences import build_sequences, leave_last_out


def _events(rows):
    return interactions_from_events(
        [{"user_id": u, "item_id": i, "type": t, "timestamp": ts} for u, i, t, ts in rows]
    )


def test_hit_rate_and_ndcg_on_hand_computed_ranks():
    # given: 0-based ranks of the held-out item for four users
    ranks = np.array([0, 3, 9, 10])

    # then
    assert evaluate.hit_rate_at_k(ranks, 10) == pytest.approx(3 / 4)
    assert evaluate.hit_rate_at_k(ranks, 1) == pytest.approx(1 / 4)
    expected = (1 / np.log2(2) + 1 / np.log2(5) + 1 / np.log2(11) + 0) / 4
    assert evaluate.ndcg_at_k(ranks, 10) == pytest.approx(expected)
    assert evaluate.ndcg_at_k(np.array([], dtype=int), 10) == 0.0


def test_recall_counts_share_of_relevant_items_found():
    ranked = [["a", "b", "c"], ["x", "y", "z"], ["q"]]
    relevant = [{"a", "c", "d", "e"}, {"z"}, set()]  # the empty set is skipped

    assert evaluate.recall_at_k(ranked, relevant, 2) == pytest.approx((1 / 4 + 0) / 2)
    assert evaluate.recall_at_k(ranked, relevant, 3) == pytest.approx((2 / 4 + 1) / 2)


def test_sequences_deduplicate_keep_strongest_weight_and_last_time():
    interactions = _events(
        [
            ("u1", "a", "view", 1),
            ("u1", "b", "view", 2),
            ("u1", "a", "purchase", 3),  # a moves after b, weight 8
            ("u2", "b", "click", 5),
        ]
    )

    seq = build_sequences(interactions)

    assert list(seq.user_vocab) == ["u1", "u2"]
    u1 = seq.items[seq.offsets[0] : seq.offsets[1]]
    assert [seq.item_vocab[i] for i in u1] == ["b", "a"]
    assert seq.weights[seq.offsets[0] : seq.offsets[1]].tolist() == [1.0, 8.0]


def test_leave_last_out_holds_out_the_latest_item_of_users_with_two_or_more():
    seq = build_sequences(
        _events(
            [
                ("u1", "a", "view", 1),
                ("u1", "b", "view", 3),
                ("u1", "c", "view", 2),
                ("u2", "a", "view", 1),  # a single item: training only
            ]
        )
    )

    train, users, items = leave_last_out(seq)

    assert [seq.user_vocab[u] for u in users] == ["u1"]
    assert [seq.item_vocab[i] for i in items] == ["b"]
    assert train.lengths.tolist() == [2, 1]
    assert "b" not in {seq.item_vocab[i] for i in train.items}


def test_held_out_ranks_exclude_training_items_and_count_ties_against_the_model():
    seq = build_sequences(
        _events([("u", "a", "view", 1), ("u", "b", "view", 2), ("v", "c", "view", 1)])
    )
    train, users, items = leave_last_out(seq)  # u: train a, test b
    # a=10 (seen: excluded), b=5, c=5 (a tie counts as ahead)
    scores = np.array([[10.0, 5.0, 5.0]], dtype=np.float32)

    ranks = evaluate.held_out_ranks(lambda u: scores, train, users, items)

    assert ranks.tolist() == [1]


def test_ease_dual_form_matches_the_primal_form():
    rng = np.random.default_rng(0)
    rows = [
        (f"u{u}", f"i{i}", "view", float(t))
        for t, (u, i) in enumerate(
            zip(rng.integers(0, 30, 400), rng.integers(0, 40, 400), strict=True)
        )
    ]
    seq = build_sequences(_events(rows))
    few_users = seq  # 30 users < 40 items: the Woodbury path
    dual = evaluate.Ease(few_users, 5.0)
    assert dual.dual

    # the primal path, forced
    primal = evaluate.Ease.__new__(evaluate.Ease)
    primal.train, primal.l2, primal.dual = few_users, 5.0, False
    gram = evaluate.item_gram(few_users)
    gram[np.diag_indices_from(gram)] += 5.0
    primal._inverse = np.linalg.inv(gram)
    primal._diag = np.diag(primal._inverse).copy()

    users = np.arange(few_users.n_users)
    np.testing.assert_allclose(dual(users), primal(users), rtol=1e-4, atol=1e-5)


def test_popularity_scorer_ranks_by_user_count():
    seq = build_sequences(
        _events([("u1", "a", "view", 1), ("u2", "a", "view", 1), ("u1", "b", "view", 2)])
    )

    scores = evaluate.popularity_scorer(seq)(np.array([0]))

    assert scores[0, 0] > scores[0, 1]


def test_paired_bootstrap_interval_excludes_zero_only_for_a_clear_difference():
    better = np.zeros(200)  # always rank 0
    worse = np.full(200, 50)  # never in the top 10
    mixed = np.where(np.arange(200) % 2 == 0, 0, 50)

    clear = evaluate.paired_bootstrap(better, worse)
    same = evaluate.paired_bootstrap(mixed, mixed[::-1])

    assert clear["hr@10"] == [1.0, 1.0]
    assert same["ndcg@10"][0] < 0 < same["ndcg@10"][1]
