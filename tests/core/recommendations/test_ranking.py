import pickle

import pytest

from core.recommendations.ranking import (
    ActiveRule,
    Candidate,
    RuleKind,
    UnreadablePairs,
    apply_rules,
    checked_pairs,
    diversify,
    pack_pairs,
    unpack_pairs,
)

CATEGORIES = {
    "a": "shoes/running",
    "b": "shoes/trail",
    "c": "books",
    "d": "books/scifi",
    "e": "toys",
    "p": "toys",  # pinnable, not a model candidate
}


def ranked(*ids: str) -> list[Candidate]:
    return [Candidate(item_id, float(len(ids) - i)) for i, item_id in enumerate(ids)]


def ids(candidates) -> list[str]:
    return [c.item_id for c in candidates]


def test_no_rules_keeps_order():
    assert ids(apply_rules(ranked("a", "b", "c"), [], CATEGORIES)) == ["a", "b", "c"]


def test_exclude_by_item_and_by_category_subtree():
    rules = [
        ActiveRule(RuleKind.EXCLUDE, item_ids=frozenset({"c"})),
        ActiveRule(RuleKind.EXCLUDE, category="shoes"),
    ]
    assert ids(apply_rules(ranked("a", "b", "c", "d", "e"), rules, CATEGORIES)) == ["d", "e"]


def test_category_target_does_not_match_a_prefix_that_is_not_a_subtree():
    rules = [ActiveRule(RuleKind.EXCLUDE, category="book")]
    assert ids(apply_rules(ranked("c", "d"), rules, CATEGORIES)) == ["c", "d"]


def test_boost_reorders_by_multiplied_score():
    rules = [ActiveRule(RuleKind.BOOST, item_ids=frozenset({"c"}), factor=10)]
    result = apply_rules(ranked("a", "b", "c"), rules, CATEGORIES)
    assert ids(result) == ["c", "a", "b"]
    assert result[0].score == 10.0


def test_bury_moves_to_the_end_keeping_relative_order():
    rules = [ActiveRule(RuleKind.BURY, category="shoes")]
    assert ids(apply_rules(ranked("a", "b", "c", "d"), rules, CATEGORIES)) == ["c", "d", "a", "b"]


def test_pin_moves_a_candidate_and_inserts_a_known_item():
    rules = [
        ActiveRule(RuleKind.PIN, item_ids=frozenset({"c"}), position=1),
        ActiveRule(RuleKind.PIN, item_ids=frozenset({"p"}), position=3),
    ]
    assert ids(apply_rules(ranked("a", "b", "c", "d"), rules, CATEGORIES)) == [
        "c",
        "a",
        "p",
        "b",
        "d",
    ]


def test_pin_never_brings_in_unknown_or_excluded_items():
    rules = [
        ActiveRule(RuleKind.PIN, item_ids=frozenset({"ghost", "e"}), position=1),
        ActiveRule(RuleKind.EXCLUDE, item_ids=frozenset({"e"})),
    ]
    assert ids(apply_rules(ranked("a", "b"), rules, CATEGORIES)) == ["a", "b"]


def test_pin_past_the_end_appends():
    rules = [ActiveRule(RuleKind.PIN, item_ids=frozenset({"p"}), position=50)]
    assert ids(apply_rules(ranked("a"), rules, CATEGORIES)) == ["a", "p"]


def test_diversity_caps_each_top_level_category_before_repeating():
    result = diversify(ranked("a", "b", "c", "d", "e"), CATEGORIES, max_per_category=1)
    assert ids(result) == ["a", "c", "e", "b", "d"]


def test_diversity_zero_disables_and_unknown_categories_are_not_capped():
    assert ids(diversify(ranked("a", "b"), CATEGORIES, 0)) == ["a", "b"]
    assert ids(diversify(ranked("x", "y"), {}, 1)) == ["x", "y"]


def test_packed_pairs_read_back_as_they_were_written():
    pairs = [Candidate("a", 0.5), ("b", 2), ("c", -1.25)]

    assert unpack_pairs(pack_pairs(pairs)) == [("a", 0.5), ("b", 2), ("c", -1.25)]
    assert unpack_pairs(pack_pairs([])) == []


@pytest.mark.parametrize(
    "value",
    [
        None,
        "ab",
        ("a", 1.0),
        [["a", 1.0]],
        [("a",)],
        [("a", 1.0, 2)],
        [(1, 1.0)],
        [("a", "1.0")],
        [("a", 1.0), ("b", None)],
    ],
    ids=repr,
)
def test_anything_but_a_list_of_item_score_pairs_is_unreadable(value):
    with pytest.raises(UnreadablePairs):
        checked_pairs(value)
    with pytest.raises(UnreadablePairs):
        unpack_pairs(pickle.dumps(value))


def test_a_blob_that_is_not_a_pickle_is_unreadable():
    with pytest.raises(UnreadablePairs, match="not a pickle"):
        unpack_pairs(b"\x80not a pickle")
