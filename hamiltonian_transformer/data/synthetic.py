"""Synthetic recall tasks: induction head and associative recall (H3 paper), multi-query associative recall (Zoology).

Every generator returns ``(inputs, targets)``, two ``(n, t)`` int64 tensors aligned position by position:
``targets[i, t]`` is the token the model must predict after reading ``inputs[i, :t + 1]``, and ``IGNORE_INDEX`` (-100,
what ``torch.nn.functional.cross_entropy`` skips) where nothing is asked. So a causal LM's logits at position t are
scored against ``targets[:, t]`` with no further shift. All randomness comes from the ``torch.Generator`` passed in.

The H3 paper's tasks (Fu, Dao et al., ICLR 2023, section 3.1), with the data of its code (HazyResearch/safari,
``src/dataloaders/synthetics.py``, ``ICLDataModule``):

- Vocabulary (``RecallVocabulary``): safari sorts its token strings, so id 0 is the no-op token ``.`` (in the
  vocabulary, never in the data), ids ``1 .. size - 2`` are the ordinary tokens and ``size - 1`` is ``=>`` (the
  separator of associative recall, the trigger of the induction head). Vocabulary 10 thus has 8 ordinary tokens.
- Each sequence is built whole, its answer last; ``inputs`` are all its tokens but the last and ``targets`` the same
  sequence one step on. ``loss_positions="all"`` asks for every next token (safari's training sets: the loss is on
  every position), ``"answer"`` only for the last one (safari's test sets: accuracy at the answer).
- The sequences of one call are distinct, as safari keeps drawing until its set has that many distinct ones.
- ``induction_head``: ``input_seq_len`` uniform ordinary tokens with the trigger written over one of them, then the
  trigger again; the answer is the token that followed the first trigger.
- ``associative_recall``: ``num_pairs`` key-value pairs, ``=>``, a key that occurred; the answer is its value.
  Keys are the first half of the ordinary tokens, values the second half (vocabulary 10: 4 keys and 4 values).
- ``associative_recall_without_separator``: this project's earlier, harder variant (every id is a key or a value,
  vocabulary 10: 5 keys and 5 values; 9 pairs; no separator), kept as a second row of the benchmark.

Multi-query associative recall, MQAR (Arora, Eyuboglu et al., "Zoology", 2023, section 3; HazyResearch/zoology,
``zoology/data/multiquery_ar.py``): ``num_pairs`` distinct keys with distinct values first, then the same keys asked
again at even offsets of the rest of the sequence (gaps drawn from a power law that favours recent positions); each
query's answer is its value, and only the queries are scored, in training as in testing.

``most_frequent_answer_accuracy`` gives each task's heuristic floor: what predicting from token counts alone scores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import torch

IGNORE_INDEX = -100
LOSS_POSITIONS = ("all", "answer")
# Zoology's power-law exponent: P(gap = g) ~ a * (g + 1)^(a - 1) for g = 0 .. space - 1, most queries soon after the
# pairs.
MQAR_POWER_A = 0.01
# Rounds of drawing that may add no new distinct sequence before a set is declared impossible to fill.
_MAX_STALLED_ROUNDS = 50


@dataclasses.dataclass(frozen=True)
class RecallVocabulary:
    """Token ids of the H3 paper's tasks, laid out as safari's sorted string vocabulary (``.`` < digits < ``=>``)."""

    size: int
    noop: ClassVar[int] = 0  # safari's "." (its allow_dot=False: never in a sequence)

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 4:
            raise ValueError(f"vocab_size must be at least 4 (no-op, two ordinary tokens, =>), got {self.size!r}")

    @property
    def separator(self) -> int:
        """``=>``: the separator before the query (associative recall), the trigger (induction head)."""
        return self.size - 1

    @property
    def ordinary(self) -> range:
        return range(1, self.size - 1)

    @property
    def keys(self) -> range:
        """The first half of the ordinary tokens (safari: ``non_special_vocab[:n // 2]``)."""
        return range(1, 1 + len(self.ordinary) // 2)

    @property
    def values(self) -> range:
        return range(self.keys.stop, self.size - 1)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _next_token_task(sequences: torch.Tensor, loss_positions: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (all tokens but the last) and next-token targets of ``sequences`` (n, t + 1), answer last."""
    if loss_positions not in LOSS_POSITIONS:
        raise ValueError(f"loss_positions must be one of {LOSS_POSITIONS}, got {loss_positions!r}")
    inputs, targets = sequences[:, :-1].contiguous(), sequences[:, 1:].clone()
    if loss_positions == "answer":
        targets[:, :-1] = IGNORE_INDEX
    return inputs, targets


def _distinct_rows(
    draw: Callable[[int], torch.Tensor], num_rows: int, generator: torch.Generator | None
) -> torch.Tensor:
    """``num_rows`` distinct rows of ``draw(k)`` (k, t) in random order; refuses tasks with fewer distinct rows."""
    rows = torch.unique(draw(num_rows), dim=0)
    stalled = 0
    while len(rows) < num_rows:
        grown = torch.unique(torch.cat([rows, draw(num_rows - len(rows))]), dim=0)
        stalled = stalled + 1 if len(grown) == len(rows) else 0
        if stalled == _MAX_STALLED_ROUNDS:
            raise ValueError(f"num_examples={num_rows} distinct sequences were asked for, but only {len(rows)} were "
                             f"found in {_MAX_STALLED_ROUNDS} rounds of drawing: the task has too few")
        rows = grown
    return rows[torch.randperm(num_rows, generator=generator)]  # torch.unique sorts the rows


def induction_head(
    num_examples: int,
    vocab_size: int = 20,
    input_seq_len: int = 30,
    generator: torch.Generator | None = None,
    loss_positions: str = "all",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The H3 paper's induction head: ``x_0 .. x_{L-1} => x_{p+1}`` with ``x_p = =>``, ``L = input_seq_len``.

    Every ``x_t`` is a uniform ordinary token except ``x_p``, the first trigger, with ``p`` uniform over
    ``0 .. L - 3`` (safari's ``rng.integers(L - 2)``), so the copied token ``x_{p+1}`` is never ``x_{L-1}``. The trigger
    occurs exactly twice. The model reads ``L + 1`` tokens (the second trigger last) and must answer ``x_{p+1}``.
    Vocabulary 20 (the paper's): 18 ordinary tokens, the trigger and the unused no-op token.
    """
    _check_positive("num_examples", num_examples)
    vocab = RecallVocabulary(vocab_size)
    if not isinstance(input_seq_len, int) or input_seq_len < 3:
        raise ValueError(f"input_seq_len must be at least 3 (trigger, copied token, one more), got {input_seq_len!r}")

    def draw(n: int) -> torch.Tensor:
        sequences = torch.randint(vocab.ordinary.start, vocab.ordinary.stop, (n, input_seq_len + 2),
                                  generator=generator)
        first = torch.randint(0, input_seq_len - 2, (n,), generator=generator)
        rows = torch.arange(n)
        sequences[rows, first] = vocab.separator
        sequences[:, input_seq_len] = vocab.separator
        sequences[:, -1] = sequences[rows, first + 1]
        return sequences

    return _next_token_task(_distinct_rows(draw, num_examples, generator), loss_positions)


def associative_recall(
    num_examples: int,
    vocab_size: int = 10,
    num_pairs: int = 10,
    generator: torch.Generator | None = None,
    loss_positions: str = "all",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The H3 paper's associative recall: ``k_1 v_1 .. k_m v_m => q v(q)`` with ``m = num_pairs``.

    Each sequence draws its own map from keys to values (uniform with replacement, so two keys may share a value);
    each pair's key is uniform over all keys (keys repeat and keep their value); the query ``q`` is uniform over the
    keys that occurred (safari redraws absent keys: ``allow_dot=False``). safari's ``input_seq_len`` is ``2 m``; the
    model reads ``2 m + 2`` tokens. Vocabulary 10 with 10 pairs is the paper's setting: keys 1-4, values 5-8, ``=>`` 9.
    """
    _check_positive("num_examples", num_examples)
    _check_positive("num_pairs", num_pairs)
    vocab = RecallVocabulary(vocab_size)
    keys, values = vocab.keys, vocab.values

    def draw(n: int) -> torch.Tensor:
        rows = torch.arange(n)
        key_to_value = torch.randint(values.start, values.stop, (n, len(keys)), generator=generator)
        pair_keys = torch.randint(0, len(keys), (n, num_pairs), generator=generator)  # indices into `keys`
        present = torch.zeros(n, len(keys)).scatter_(1, pair_keys, 1.0)
        query = torch.multinomial(present, 1, generator=generator).squeeze(1)  # uniform over the present keys
        pairs = torch.stack([keys.start + pair_keys, key_to_value.gather(1, pair_keys)], dim=-1)  # (n, m, 2)
        tail = torch.stack([torch.full((n,), vocab.separator), keys.start + query, key_to_value[rows, query]], dim=1)
        return torch.cat([pairs.flatten(1), tail], dim=1)  # (n, 2m + 3)

    return _next_token_task(_distinct_rows(draw, num_examples, generator), loss_positions)


def associative_recall_without_separator(
    num_examples: int,
    vocab_size: int = 10,
    length: int = 20,
    generator: torch.Generator | None = None,
    loss_positions: str = "all",
) -> tuple[torch.Tensor, torch.Tensor]:
    """This project's harder associative recall: ``k_1 v_1 .. k_m v_m q`` read, ``v(q)`` answered, no separator.

    Every id is a key or a value: keys ``0 .. vocab_size // 2 - 1``, values the rest (vocabulary 10: 5 and 5). The
    model reads ``length`` tokens with ``m = (length - 1) // 2`` pairs; an even ``length`` starts with one uniform
    value token (a pair with its key cut off), so the pairs stay aligned to the query. Each sequence draws its own
    map (uniform, two keys may share a value); the query is the key of a uniform pair, so frequent keys are asked
    more often.
    """
    _check_positive("num_examples", num_examples)
    if not isinstance(vocab_size, int) or vocab_size < 4:
        raise ValueError(f"vocab_size must be at least 4 (two keys and two values), got {vocab_size!r}")
    if not isinstance(length, int) or length < 3:
        raise ValueError(f"length must be at least 3 (one key-value pair and the query), got {length!r}")
    num_keys = vocab_size // 2
    num_pairs = (length - 1) // 2

    def draw(n: int) -> torch.Tensor:
        rows = torch.arange(n)
        key_to_value = torch.randint(num_keys, vocab_size, (n, num_keys), generator=generator)
        keys = torch.randint(0, num_keys, (n, num_pairs), generator=generator)
        pairs = torch.stack([keys, key_to_value.gather(1, keys)], dim=-1).flatten(1)  # (n, 2m): k v k v ...
        query = keys[rows, torch.randint(0, num_pairs, (n,), generator=generator)]
        lead = torch.randint(num_keys, vocab_size, (n, length - 1 - 2 * num_pairs), generator=generator)
        return torch.cat([lead, pairs, query[:, None], key_to_value[rows, query][:, None]], dim=1)  # (n, length + 1)

    return _next_token_task(_distinct_rows(draw, num_examples, generator), loss_positions)


def _distinct_draws(num_rows: int, count: int, low: int, high: int, generator: torch.Generator | None) -> torch.Tensor:
    """(num_rows, count) tokens of ``low .. high - 1``, distinct within a row, uniform over such ordered draws.

    Floyd's subset sampling (``count`` steps, no (num_rows, high - low) table), then a uniform order of the subset.
    """
    size = high - low
    chosen = torch.empty(num_rows, count, dtype=torch.long)
    for column, top in enumerate(range(size - count, size)):
        candidate = torch.randint(0, top + 1, (num_rows,), generator=generator)
        taken = (chosen[:, :column] == candidate[:, None]).any(dim=1)
        chosen[:, column] = torch.where(taken, top, candidate)  # `top` cannot be taken: earlier draws are below it
    order = torch.rand(num_rows, count, generator=generator).argsort(dim=1)
    return low + chosen.gather(1, order)


def multi_query_associative_recall(
    num_examples: int,
    vocab_size: int = 8192,
    length: int = 64,
    num_pairs: int = 4,
    generator: torch.Generator | None = None,
    random_non_queries: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MQAR as in Zoology: ``num_pairs`` key-value pairs, then each key queried once further on.

    Keys are distinct tokens of ``1 .. vocab_size // 2 - 1``, values distinct tokens of ``vocab_size // 2 ..
    vocab_size - 1``. After the ``2 * num_pairs`` context tokens, key ``j`` is placed at offset ``2 g_j`` of the rest,
    with distinct gaps ``g_j`` of ``0 .. space - 1`` (``space = (length - 2 * num_pairs) // 2``) drawn without
    replacement with probability ~ ``(g + 1)^(a - 1)`` (``a = 0.01``); its target is its value and no other position
    is scored. Every other position holds token 0, as in the Zoology paper's runs (its figure 2 configs set
    ``random_non_queries=False``); with ``random_non_queries`` they hold uniform tokens of the whole vocabulary
    instead (the Zoology function's default). Returns inputs and targets, each ``(num_examples, length)``.
    """
    _check_positive("num_examples", num_examples)
    _check_positive("num_pairs", num_pairs)
    if not isinstance(length, int) or length % 2 or length < 4 * num_pairs:
        raise ValueError(
            f"length must be an even integer of at least 4 * num_pairs = {4 * num_pairs} (context and queries), "
            f"got {length!r}"
        )
    if not isinstance(vocab_size, int) or vocab_size // 2 - 1 < num_pairs:
        raise ValueError(
            f"vocab_size must give at least num_pairs={num_pairs} keys (keys are 1 .. vocab_size // 2 - 1), "
            f"got {vocab_size!r}"
        )
    half = vocab_size // 2
    context = 2 * num_pairs
    space = (length - context) // 2
    keys = _distinct_draws(num_examples, num_pairs, 1, half, generator)
    values = _distinct_draws(num_examples, num_pairs, half, vocab_size, generator)
    gap_weights = torch.arange(1, space + 1, dtype=torch.float64) ** (MQAR_POWER_A - 1)
    gaps = torch.multinomial(gap_weights.expand(num_examples, space), num_pairs, generator=generator)  # (n, pairs)

    inputs = torch.zeros(num_examples, length, dtype=torch.long)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    query_positions = context + 2 * gaps  # (n, pairs)
    inputs.scatter_(1, query_positions, keys)
    if random_non_queries:
        filler = inputs == 0
        inputs[filler] = torch.randint(0, vocab_size, inputs.shape, generator=generator)[filler]
    targets = torch.full((num_examples, length), IGNORE_INDEX, dtype=torch.long)
    targets.scatter_(1, query_positions, values)
    return inputs, targets


def answer_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of scored positions (targets != -100) where the argmax of ``logits`` (n, length, vocab) is right."""
    scored = targets != IGNORE_INDEX
    if not scored.any():
        raise ValueError("targets have no scored position (every entry is -100)")
    return (logits.argmax(-1)[scored] == targets[scored]).float().mean().item()


@torch.no_grad()
def most_frequent_answer_accuracy(
    inputs: torch.Tensor, targets: torch.Tensor, answer_tokens: range, chunk_size: int = 1024
) -> float:
    """Heuristic floor: accuracy of predicting, at each scored position t, the token of ``answer_tokens`` that occurs
    most often in ``inputs[:, :t + 1]``, ties split evenly (the expected accuracy of a uniform pick among them).

    It reads the context but not the query, so it scores what a model gets from token counts alone, without recall:
    for associative recall the most frequent value, for the induction head the most frequent ordinary token, for
    MQAR (every value once) a uniform guess among the context's values, 1 / num_pairs.
    """
    rows, positions = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    if not len(rows):
        raise ValueError("targets have no scored position (every entry is -100)")
    vocab_size = max(int(inputs.max()), int(targets.max()), answer_tokens.stop - 1) + 1
    is_answer_token = torch.zeros(vocab_size, dtype=torch.bool)
    is_answer_token[answer_tokens.start:answer_tokens.stop] = True
    steps = torch.arange(inputs.shape[1])
    credit = 0.0
    for start in range(0, len(rows), chunk_size):
        row, position = rows[start:start + chunk_size], positions[start:start + chunk_size]
        seen = (steps[None, :] <= position[:, None]).double()  # (c, t): the context read at each scored position
        counts = torch.zeros(len(row), vocab_size, dtype=torch.float64).scatter_add_(1, inputs[row], seen)
        counts[:, ~is_answer_token] = -1.0
        ties = counts == counts.max(dim=1, keepdim=True).values  # (c, vocab)
        hit = ties.gather(1, targets[row, position][:, None]).squeeze(1)
        credit += (hit / ties.sum(dim=1)).sum().item()
    return credit / len(rows)
