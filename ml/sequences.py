"""Per-user interaction sequences: integer-coded, de-duplicated, ordered by time.

Training and evaluation both look at a shopper as an ordered list of distinct items. Repeated
events on the same item (view, then click, then purchase) collapse into one entry that keeps the
strongest event weight and sits at the time of the *last* event on that item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml.interactions import Interactions, InvalidEventsError


@dataclass(frozen=True)
class Sequences:
    """CSR-like storage: user ``u`` owns entries ``offsets[u]:offsets[u + 1]``, oldest first."""

    user_vocab: np.ndarray  # index -> external user id (object)
    item_vocab: np.ndarray  # index -> external item id (object), sorted
    offsets: np.ndarray  # int64, n_users + 1
    items: np.ndarray  # int32 item index
    weights: np.ndarray  # float32
    timestamps: np.ndarray  # float64 epoch seconds of the last event on the item

    @property
    def n_users(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def n_items(self) -> int:
        return int(self.item_vocab.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def user_of_entry(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_users, dtype=np.int64), self.lengths)

    @property
    def position(self) -> np.ndarray:
        """Position of every entry inside its user's sequence (0 = oldest)."""
        starts = np.repeat(self.offsets[:-1], self.lengths)
        return np.arange(self.items.shape[0], dtype=np.int64) - starts

    @property
    def age(self) -> np.ndarray:
        """How many newer entries the user has after each entry (0 = most recent)."""
        return np.repeat(self.lengths, self.lengths) - 1 - self.position

    def entries_of(self, users: np.ndarray) -> np.ndarray:
        """Indices into ``items`` of all entries of ``users``, user by user, oldest first."""
        lengths = self.lengths[users]
        starts = np.repeat(self.offsets[users], lengths)
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return starts + within

    def histories(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR ``(offsets, items, weights)`` of the given users' sequences."""
        entries = self.entries_of(users)
        offsets = np.concatenate([[0], np.cumsum(self.lengths[users])]).astype(np.int64)
        return offsets, self.items[entries], self.weights[entries]

    def select(self, keep: np.ndarray) -> Sequences:
        """Keep the entries where ``keep`` is true (same users, same vocabularies)."""
        counts = np.bincount(self.user_of_entry[keep], minlength=self.n_users)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return Sequences(
            self.user_vocab,
            self.item_vocab,
            offsets,
            self.items[keep],
            self.weights[keep],
            self.timestamps[keep],
        )


def build_sequences(interactions: Interactions) -> Sequences:
    """Code, de-duplicate and order the interactions of every user."""
    if len(interactions) == 0:
        raise InvalidEventsError("no events: nothing to train on")
    user_vocab, user_codes = np.unique(interactions.user_ids.astype(str), return_inverse=True)
    item_vocab, item_codes = np.unique(interactions.item_ids.astype(str), return_inverse=True)
    n_items = item_vocab.shape[0]
    order = np.arange(len(interactions), dtype=np.int64)
    # Sort by (user, item, time, file position): the last row of each pair is its last event.
    pair = user_codes.astype(np.int64) * n_items + item_codes
    by_pair = np.lexsort((order, interactions.timestamps, pair))
    pair_sorted = pair[by_pair]
    group_end = np.flatnonzero(np.r_[pair_sorted[1:] != pair_sorted[:-1], True])
    group_start = np.r_[0, group_end[:-1] + 1]
    last = by_pair[group_end]
    weight = np.maximum.reduceat(interactions.weights[by_pair], group_start).astype(np.float32)
    users = user_codes[last]
    # Order the distinct pairs by (user, time of last event, position of last event).
    chrono = np.lexsort((last, interactions.timestamps[last], users))
    users = users[chrono]
    counts = np.bincount(users, minlength=user_vocab.shape[0])
    return Sequences(
        user_vocab=user_vocab.astype(object),
        item_vocab=item_vocab.astype(object),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        items=item_codes[last][chrono].astype(np.int32),
        weights=weight[chrono],
        timestamps=interactions.timestamps[last][chrono],
    )


def leave_last_out(sequences: Sequences) -> tuple[Sequences, np.ndarray, np.ndarray]:
    """Temporal leave-last-out: every user's most recent distinct item is held out.

    Users with fewer than two distinct items stay entirely in training and get no test item.
    Returns ``(train, test_users, test_items)``.
    """
    lengths = sequences.lengths
    test_users = np.flatnonzero(lengths >= 2)
    last_entry = sequences.offsets[1:] - 1
    keep = np.ones(sequences.items.shape[0], dtype=bool)
    keep[last_entry[test_users]] = False
    test_items = sequences.items[last_entry[test_users]]
    return sequences.select(keep), test_users, test_items
