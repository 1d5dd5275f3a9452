"""Batching token sequences for padding: `length_batches`."""

from __future__ import annotations

import random

import pytest

from dcr.modeling.chat import length_batches


def test_without_a_binding_cap_the_batches_are_fixed_size_runs_of_the_stable_length_order():
    lengths = [5, 3, 9, 3, 7, 1, 5]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    assert length_batches(lengths, 3, 10**6) == [order[0:3], order[3:6], order[6:]]


@pytest.mark.parametrize("seed", range(5))
def test_the_cap_bounds_padded_tokens_and_every_sequence_appears_once(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(1, 40), rng.randint(100, 400)]) for _ in range(rng.randint(1, 120))]
    batch_size, cap = rng.randint(1, 32), rng.randint(50, 2000)
    batches = length_batches(lengths, batch_size, cap)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths)
    for b in batches:
        padded = len(b) * max(lengths[i] for i in b)
        assert 1 <= len(b) <= batch_size and (padded <= cap or len(b) == 1)
    for b, nxt in zip(batches, batches[1:], strict=False):
        # a batch is cut only when full or when the next sequence would pass the cap
        assert len(b) == batch_size or (len(b) + 1) * lengths[nxt[0]] > cap


def test_a_few_long_sequences_no_longer_pad_a_batch_of_short_ones():
    lengths = [10] * 75 + [300] * 5
    batches = length_batches(lengths, 80, 1000)
    assert sum(len(b) * max(lengths[i] for i in b) for b in batches) <= 75 * 10 + 5 * 300
    assert length_batches(lengths, 80, 10**6) == [list(range(80))]


def test_no_sequences_give_no_batches():
    assert length_batches([], 4, 100) == []
