"""Synthetic recall tasks: the exact sequences of tiny settings, worked out by hand, properties of the papers'
settings over many samples, and the heuristic floor on hand-built contexts."""

from itertools import product

import pytest
import torch

from hamiltonian_transformer.data.synthetic import (
    IGNORE_INDEX,
    MQAR_POWER_A,
    RecallVocabulary,
    answer_accuracy,
    associative_recall,
    associative_recall_without_separator,
    induction_head,
    most_frequent_answer_accuracy,
    multi_query_associative_recall,
)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _whole_sequences(inputs: torch.Tensor, targets: torch.Tensor) -> set[tuple[int, ...]]:
    """The generated sequences, answer included (inputs plus the last target)."""
    return {tuple(row) for row in torch.cat([inputs, targets[:, -1:]], dim=1).tolist()}


# Vocabulary


def test_recall_vocabulary_follows_safaris_sorted_string_layout():
    # safari's vocabulary 10 holds "0".."7" and the specials "." and "=>"; sorted as strings: ".", "0".."7", "=>".
    vocab = RecallVocabulary(10)
    assert vocab.noop == 0 and vocab.separator == 9
    assert vocab.ordinary == range(1, 9) and vocab.keys == range(1, 5) and vocab.values == range(5, 9)
    vocab = RecallVocabulary(20)  # the induction head's: 18 ordinary tokens
    assert len(vocab.ordinary) == 18 and vocab.separator == 19
    with pytest.raises(ValueError, match="vocab_size"):
        RecallVocabulary(3)


# Induction head


def test_induction_head_tiny_setting_gives_exactly_the_hand_enumerated_sequences():
    # Vocabulary 5: ordinary 1-3, trigger 4. input_seq_len 3: the first trigger can only be at 0 (p < 3 - 2), so every
    # sequence is "4 a b 4 a": 9 of them.
    inputs, targets = induction_head(9, vocab_size=5, input_seq_len=3, generator=_generator())
    assert _whole_sequences(inputs, targets) == {(4, a, b, 4, a) for a, b in product((1, 2, 3), repeat=2)}
    assert inputs.shape == targets.shape == (9, 4)
    assert torch.equal(targets[:, :-1], inputs[:, 1:])  # the loss is on every next token
    assert torch.equal(targets[:, -1], inputs[:, 1])
    _, answer_only = induction_head(9, vocab_size=5, input_seq_len=3, generator=_generator(), loss_positions="answer")
    assert (answer_only[:, :-1] == IGNORE_INDEX).all() and set(answer_only[:, -1].tolist()) == {1, 2, 3}
    with pytest.raises(ValueError, match="distinct"):
        induction_head(10, vocab_size=5, input_seq_len=3, generator=_generator())


def test_induction_head_paper_setting_copies_the_token_after_the_first_trigger():
    n, trigger = 2000, 19
    inputs, targets = induction_head(n, vocab_size=20, input_seq_len=30, generator=_generator(1))
    assert inputs.shape == targets.shape == (n, 31)
    assert len(_whole_sequences(inputs, targets)) == n
    assert inputs.min() >= 1 and inputs.max() <= trigger  # the no-op token 0 never occurs
    assert ((inputs == trigger).sum(1) == 2).all() and (inputs[:, 30] == trigger).all()
    first = (inputs == trigger).int().argmax(1)
    assert first.min() == 0 and first.max() == 27  # p uniform over 0 .. input_seq_len - 3
    assert torch.equal(targets[:, -1], inputs[torch.arange(n), first + 1])
    assert torch.equal(targets[:, :-1], inputs[:, 1:])


# Associative recall (H3 paper)


def test_associative_recall_tiny_setting_gives_exactly_the_hand_enumerated_sequences():
    # Vocabulary 6: keys 1-2, values 3-4, "=>" 5. Two pairs, then "=> q v(q)" with q one of the keys that occurred.
    expected = set()
    for first_key, second_key in product((1, 2), repeat=2):
        for value_of_1, value_of_2 in product((3, 4), repeat=2):
            value = {1: value_of_1, 2: value_of_2}
            for query in {first_key, second_key}:
                expected.add((first_key, value[first_key], second_key, value[second_key], 5, query, value[query]))
    assert len(expected) == 20  # same key twice: 2 keys x 2 values; two keys: 2 orders x 4 maps x 2 queries
    inputs, targets = associative_recall(20, vocab_size=6, num_pairs=2, generator=_generator())
    assert _whole_sequences(inputs, targets) == expected
    assert torch.equal(targets[:, :-1], inputs[:, 1:])
    with pytest.raises(ValueError, match="distinct"):
        associative_recall(21, vocab_size=6, num_pairs=2, generator=_generator())


def test_associative_recall_paper_setting_asks_a_present_key_after_the_separator():
    n = 3000
    inputs, targets = associative_recall(n, vocab_size=10, num_pairs=10, generator=_generator(2))
    assert inputs.shape == (n, 22) and (inputs[:, 20] == 9).all()
    keys, values = inputs[:, 0:20:2], inputs[:, 1:20:2]
    assert keys.min() >= 1 and keys.max() <= 4 and values.min() >= 5 and values.max() <= 8
    first_key_asked = expected_first_key_asked = 0.0
    for row_keys, row_values, query, answer in zip(keys.tolist(), values.tolist(), inputs[:, 21].tolist(),
                                                   targets[:, -1].tolist()):
        mapping = {}
        for key, value in zip(row_keys, row_values):
            assert mapping.setdefault(key, value) == value  # a repeated key keeps its value
        assert query in mapping and mapping[query] == answer
        first_key_asked += query == row_keys[0]
        expected_first_key_asked += 1 / len(mapping)
    # The query is uniform over the distinct keys present, not over pairs (which would favour frequent keys: about
    # 0.325 n instead of 0.26 n here).
    assert abs(first_key_asked - expected_first_key_asked) / n < 0.025
    _, answer_only = associative_recall(n, generator=_generator(2), loss_positions="answer")
    assert (answer_only[:, :-1] == IGNORE_INDEX).all() and torch.equal(answer_only[:, -1], targets[:, -1])


# Associative recall without separator (this project's harder variant)


def test_associative_recall_without_separator_tiny_settings_give_the_hand_enumerated_sequences():
    # Vocabulary 4: keys 0-1, values 2-3. Length 3: "k v k", answer v. Length 4 starts with one lone value.
    inputs, targets = associative_recall_without_separator(4, vocab_size=4, length=3, generator=_generator())
    assert _whole_sequences(inputs, targets) == {(k, v, k, v) for k, v in product((0, 1), (2, 3))}
    inputs, targets = associative_recall_without_separator(8, vocab_size=4, length=4, generator=_generator())
    assert _whole_sequences(inputs, targets) == {(lead, k, v, k, v) for lead, k, v in product((2, 3), (0, 1), (2, 3))}


def test_associative_recall_without_separator_default_has_five_keys_five_values_and_nine_pairs():
    inputs, targets = associative_recall_without_separator(500, generator=_generator(3), loss_positions="answer")
    assert inputs.shape == (500, 20) and (targets[:, :-1] == IGNORE_INDEX).all()
    for row, answer in zip(inputs.tolist(), targets[:, -1].tolist()):
        keys, values = row[1:-1:2], row[2:-1:2]
        assert len(keys) == 9 and row[0] >= 5 and all(k < 5 for k in keys) and all(v >= 5 for v in values)
        mapping = dict(zip(keys, values))
        assert row[-1] in mapping and mapping[row[-1]] == answer


# MQAR (Zoology)


def test_mqar_tiny_setting_asks_both_keys_at_the_two_query_slots():
    # Vocabulary 12: keys 1-5, values 6-11. Length 8 with 2 pairs: 4 context tokens, then 2 slots (offsets 0 and 2),
    # so both gaps are used: queries at positions 4 and 6, token 0 at 5 and 7.
    inputs, targets = multi_query_associative_recall(50, vocab_size=12, length=8, num_pairs=2, generator=_generator())
    assert (inputs[:, [5, 7]] == 0).all()
    assert (targets[:, [0, 1, 2, 3, 5, 7]] == IGNORE_INDEX).all()
    for row, row_targets in zip(inputs.tolist(), targets.tolist()):
        keys, values = row[0:4:2], row[1:4:2]
        assert keys[0] != keys[1] and values[0] != values[1]
        assert all(1 <= k <= 5 for k in keys) and all(6 <= v <= 11 for v in values)
        assert {row[4], row[6]} == set(keys)
        value_of = dict(zip(keys, values))
        assert row_targets[4] == value_of[row[4]] and row_targets[6] == value_of[row[6]]


def test_mqar_query_gaps_follow_zoologys_power_law():
    n, space = 20000, 7  # length 16, one pair: 2 context tokens, 7 query slots
    inputs, targets = multi_query_associative_recall(n, vocab_size=64, length=16, num_pairs=1, generator=_generator(4))
    gaps = ((targets != IGNORE_INDEX).int().argmax(1) - 2) // 2
    weights = torch.arange(1, space + 1, dtype=torch.float64) ** (MQAR_POWER_A - 1)
    frequencies = torch.bincount(gaps, minlength=space).double() / n
    assert torch.allclose(frequencies, weights / weights.sum(), atol=0.01)


@pytest.mark.parametrize("length, pairs", [(64, 4), (128, 8)])
def test_mqar_paper_settings_have_distinct_pairs_each_asked_once(length, pairs):
    inputs, targets = multi_query_associative_recall(200, 8192, length, pairs, generator=_generator(5))
    context = 2 * pairs
    for row, row_targets in zip(inputs.tolist(), targets.tolist()):
        keys, values = row[0:context:2], row[1:context:2]
        assert len(set(keys)) == pairs and len(set(values)) == pairs
        assert all(1 <= k < 4096 for k in keys) and all(4096 <= v < 8192 for v in values)
        scored = [t for t, target in enumerate(row_targets) if target != IGNORE_INDEX]
        assert len(scored) == pairs and all(t >= context and (t - context) % 2 == 0 for t in scored)
        assert sorted(row[t] for t in scored) == sorted(keys)
        assert all(row_targets[t] == dict(zip(keys, values))[row[t]] for t in scored)
        assert all(row[t] == 0 for t in range(context, length) if t not in scored)


def test_mqar_random_non_queries_fill_every_other_position_from_the_whole_vocabulary():
    plain = multi_query_associative_recall(300, 256, 64, 4, generator=_generator(6))
    noisy = multi_query_associative_recall(300, 256, 64, 4, generator=_generator(6), random_non_queries=True)
    filler = plain[0] == 0
    assert torch.equal(noisy[0][~filler], plain[0][~filler]) and torch.equal(noisy[1], plain[1])
    assert noisy[0][filler].float().std() > 50 and 0 <= noisy[0].min() and noisy[0].max() < 256


# Shared behaviour


def test_synthetic_tasks_are_reproducible_from_the_generator_seed():
    for make in (lambda g: induction_head(16, generator=g), lambda g: associative_recall(16, generator=g),
                 lambda g: associative_recall_without_separator(16, generator=g),
                 lambda g: multi_query_associative_recall(8, 128, 64, 4, generator=g)):
        first, again, other = make(_generator(5)), make(_generator(5)), make(_generator(6))
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: induction_head(4, vocab_size=3), "vocab_size"),
        (lambda: induction_head(4, input_seq_len=2), "input_seq_len"),
        (lambda: induction_head(0), "num_examples"),
        (lambda: induction_head(4, loss_positions="query"), "loss_positions"),
        (lambda: associative_recall(4, num_pairs=0), "num_pairs"),
        (lambda: associative_recall_without_separator(4, length=2), "length"),
        (lambda: multi_query_associative_recall(4, 128, 63, 4), "length"),
        (lambda: multi_query_associative_recall(4, 128, 8, 4), "length"),
        (lambda: multi_query_associative_recall(4, 8, 64, 4), "vocab_size"),
    ],
)
def test_synthetic_generators_reject_impossible_settings(call, field):
    with pytest.raises(ValueError, match=field):
        call()


def test_answer_accuracy_scores_only_answer_positions():
    _, targets = induction_head(16, generator=_generator(), loss_positions="answer")
    perfect = torch.nn.functional.one_hot(targets.clamp(min=0), 20).float()
    assert answer_accuracy(perfect, targets) == 1.0
    assert answer_accuracy(torch.roll(perfect, 1, dims=-1), targets) == 0.0
    with pytest.raises(ValueError, match="no scored position"):
        answer_accuracy(perfect, torch.full_like(targets, IGNORE_INDEX))


# Heuristic floor


def _last_answer(inputs: list[int], answer: int) -> tuple[torch.Tensor, torch.Tensor]:
    targets = [IGNORE_INDEX] * (len(inputs) - 1) + [answer]
    return torch.tensor([inputs]), torch.tensor([targets])


def test_floor_predicts_the_most_frequent_answer_token_of_the_context():
    values = range(5, 9)
    # Values seen: 5 twice, 6 once (keys 1, 2 and "=>" 9 are not candidates).
    assert most_frequent_answer_accuracy(*_last_answer([1, 5, 2, 5, 1, 6, 9, 1], 5), values) == 1.0
    assert most_frequent_answer_accuracy(*_last_answer([1, 5, 2, 5, 1, 6, 9, 1], 6), values) == 0.0
    # 5 and 6 once each: a tie, half the credit; nothing seen: a uniform guess among the four values.
    assert most_frequent_answer_accuracy(*_last_answer([1, 5, 2, 6, 9, 1], 6), values) == 0.5
    assert most_frequent_answer_accuracy(*_last_answer([1, 2, 9, 1], 7), values) == 0.25


def test_floor_reads_only_the_context_before_each_scored_position():
    # Scored at t = 1: the context is "6 1", so 6 is predicted although 7 is more frequent later on.
    inputs = torch.tensor([[6, 1, 7, 7, 0]])
    targets = torch.tensor([[IGNORE_INDEX, 6, IGNORE_INDEX, 7, IGNORE_INDEX]])
    assert most_frequent_answer_accuracy(inputs, targets, range(5, 9)) == 1.0  # right at t = 1 and at t = 3
    targets[0, 3] = 6  # at t = 3, "7" is predicted
    assert most_frequent_answer_accuracy(inputs, targets, range(5, 9), chunk_size=1) == 0.5
    with pytest.raises(ValueError, match="no scored position"):
        most_frequent_answer_accuracy(inputs, torch.full_like(targets, IGNORE_INDEX), range(5, 9))


def test_floors_of_the_paper_tasks_sit_between_chance_and_recall():
    # MQAR: every value occurs once before its query, so the floor is a uniform guess among num_pairs values.
    inputs, targets = multi_query_associative_recall(300, 8192, 128, 8, generator=_generator(7))
    assert most_frequent_answer_accuracy(inputs, targets, range(4096, 8192)) == pytest.approx(1 / 8)
    inputs, targets = associative_recall(3000, generator=_generator(7), loss_positions="answer")
    assert 0.25 < most_frequent_answer_accuracy(inputs, targets, RecallVocabulary(10).values) < 0.6
    inputs, targets = induction_head(3000, generator=_generator(7), loss_positions="answer")
    assert 1 / 18 < most_frequent_answer_accuracy(inputs, targets, RecallVocabulary(20).ordinary) < 0.3
    # The issue measured 0.534 for "the most frequent value" on the 5 x 5 task (there without the lone lead value).
    inputs, targets = associative_recall_without_separator(20000, generator=_generator(7), loss_positions="answer")
    assert most_frequent_answer_accuracy(inputs, targets, range(5, 10)) == pytest.approx(0.53, abs=0.015)
