"""Quality against the papers' own protocols: synthetic recall (H3 paper, Zoology MQAR), ListOps, LM perplexity.

    python scripts/bench/quality.py --quick                                  # every section and task, about a minute
    python scripts/bench/quality.py --output_dir outputs/bench/quality       # the papers' budgets: days on a CPU
    python scripts/bench/quality.py --budget_fraction 0.05 --output_dir outputs/bench/quality   # 5% of the epochs

Sections (``--sections``); every model is trained from scratch per seed with the same data and recipe:
  synthetic  the H3 paper's tasks (section 3.1, table 2) as its code, HazyResearch/safari, defines and trains them:
             induction head (vocabulary 20, 30 tokens, then the trigger) and associative recall (vocabulary 10:
             4 keys x 4 values, 10 pairs, ``=>``, the query), plus this project's harder associative recall (5 keys x
             5 values, 9 pairs, no separator) on the same recipe. 2 layers, width 32, one attention head: pure H3,
             H3 without its shift SSM (S4D-like), hybrid H3, the Hamiltonian Transformer and Llama. safari's recipe
             (``SAFARI_*`` below): a fixed set of 5,000 distinct training sequences, 200 epochs (associative recall)
             or 400 (induction head) of batch 32 with the loss on every next token, AdamW lr 5e-4, betas (0.9,
             0.999), weight decay 0.1, no gradient clipping, warm-up over the first 10% of the steps, then linear
             decay to 0 (associative recall) or cosine to 0.1 lr (induction head), dropout 0.1 on the embeddings and
             the attention weights; accuracy at the answer of 500 test sequences. Paper: H3 100.0 / 99.8,
             attention 100.0 / 100.0, S4D 35.6 / 86.0 (induction / recall). The sets are drawn once from
             ``--synthetic_data_seed``; ``--synthetic_data_file`` trains on safari's own (safari_train.py
             ``--write_data``) instead.
  mqar       Zoology's multi-query associative recall (vocabulary 8192) at (length, pairs) ``--mqar_configs`` and
             widths ``--mqar_widths``, 2 layers: pure H3, hybrid H3, the Hamiltonian Transformer and Llama. Zoology's
             recipe (``ZOOLOGY_MQAR``): 100,000 training sequences, 64 epochs of batch 512, loss at the queries,
             AdamW weight decay 0.1, embedding dropout 0.1, cosine decay over the epochs to 0, no warm-up, no
             clipping, four learning rates of which the best is reported, training stopped once test accuracy
             passes 0.99; accuracy over the queries of 3,000 test sequences. Zoology (figure 2, read off the
             plot): attention ~0.98 throughout; H3 ~0.91 / ~0.98 at (64, 4) and ~0.25 / ~0.73 at (128, 8), widths
             64 / 128.
  lm         validation perplexity on the embedded standard-library corpus (byte-level BPE trained on its train
             split) after ``--lm_tokens`` training tokens, the equal budget: the Hamiltonian Transformer, hybrid H3
             and Llama (fresh batches, AdamW with ``--lr``, cosine schedule with warm-up, clipping at 1).
  listops    ListOps accuracy through scripts/finetune_classification.py (Trainer), each model saved fresh and
             fine-tuned for ``--listops_steps`` steps; LRA reports Transformer 36.4%, S4 ~59% at lengths <= 2000.

The papers' budgets are far beyond a small CPU: ``--budget_fraction`` scales the epochs of the synthetic and MQAR
recipes (the schedule then spans the epochs run) and the reports say what was run against what the paper ran, with
each model's seconds per step and what the paper's budget would take at that speed. Beside every task the report
prints its heuristic floor: what a predictor from token counts alone scores (``most_frequent_answer_accuracy``).
Seeds (``--seeds`` overrides them all): 3 for the synthetic tasks and ListOps, 1 per learning rate for MQAR (as
Zoology), 2 for the LM. Figures are mean +- sample standard deviation over the seeds with the seed count; per-seed
values and per-epoch test accuracies are in the JSON.

A killed command, rerun unchanged, goes on where it stopped: each training run keeps its state under
``--output_dir``/runs (``RunStore``), the figures of a run that finished and a checkpoint (weights, AdamW, schedule,
random states) written after every epoch of the synthetic and MQAR recipes and every twentieth of the LM steps, from
which the run ends where an uninterrupted one ends (a ListOps run is only read back once finished). The folder is
removed once the report is written, so a finished command rerun trains afresh.

Dropout is the papers' (``Recipe``): 0.1 on the embeddings of every model (safari and Zoology), 0.1 on the attention
weights in the synthetic section (safari's transformer), applied to every model of a section alike (the embeddings'
through a forward hook, as Llama has no such field). The models stay the family's and transformers' own, so they
differ from the papers' in a few ways: Llama's rotary positions where the papers' attention
has learned absolute ones; an MLP of 4 x width in every block, where Zoology's MQAR models have none; H3 with state
size 64 and head size 1 (safari's; Zoology's MQAR H3 has state size = length, head size 2, a trained shift B and no
MLP: ``--models h3:pure:zoology`` builds that one).

Weight decay goes where the papers' code puts it (``Recipe.decay_groups``): safari decays every parameter but the
diagonal SSMs' dt, A and B, which get min(1e-3, lr) (its synthetic configs set no ``optimizer_param_grouping``);
Zoology decays every parameter at one learning rate. ``--decay_groups family`` runs the family's groups instead (no
decay on norms, biases and any SSM parameter), as the runs recorded before this option did.

Each seed draws the initial weights (then the dropout masks, from torch's global generator) and, from a generator of
its own seeded alike, the batch order. Both generators then run through the same stream of random numbers, where
safari's data loader draws each epoch's order from the global stream after the initialisation.
``--order_seed_offset K`` seeds the batch order with the seed plus K, decoupling the two.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
import transformers
from comparators import MODEL_NAMES, ModelShape, build_model, choice_list, describe, int_list
from measure import machine_info
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from hamiltonian_transformer.data import listops_tokenizer, load_stdlib_corpus, pack_dataset, train_bpe_tokenizer
from hamiltonian_transformer.data.synthetic import (
    IGNORE_INDEX,
    RecallVocabulary,
    associative_recall,
    associative_recall_without_separator,
    induction_head,
    most_frequent_answer_accuracy,
    multi_query_associative_recall,
)
from hamiltonian_transformer.optimization import DEFAULT_MAX_SSM_LEARNING_RATE, parameter_groups
from hamiltonian_transformer.run_outputs import perplexity
from hamiltonian_transformer.ssm import ssm_parameter_names

REPO_ROOT = Path(__file__).resolve().parents[2]
FINETUNE_SCRIPT = REPO_ROOT / "scripts" / "finetune_classification.py"
SECTIONS = ("synthetic", "mqar", "lm", "listops")
SECTION_MODELS = {
    "synthetic": ("h3:pure", "h3:pure:no_shift", "h3", "hamiltonian:symplectic_euler", "llama"),
    "mqar": ("h3:pure", "h3", "hamiltonian:symplectic_euler", "llama"),
    "lm": ("hamiltonian:symplectic_euler", "h3", "llama"),
    "listops": ("hamiltonian:symplectic_euler", "h3", "llama"),
}
SECTION_SEEDS = {"synthetic": [0, 1, 2], "mqar": [0], "lm": [0, 1], "listops": [0, 1, 2]}
EVAL_BATCH_SIZE = 128


# ----------------------------------------------------------------------------------------------------------------------
# The papers' recipes and tasks
# ----------------------------------------------------------------------------------------------------------------------
# safari gives weight decay 0 and its own learning rate only to the SSM parameters its kernels register
# (``OptimModule.register``: dt, A and B of the diagonal SSM, the shift SSM's B); its synthetic configs set no
# ``optimizer_param_grouping``, so everything else, norms, biases and the diagonal SSM's C and D included, is decayed
# at the main rate.
SAFARI_DECAYED_SSM_PARAMETERS = ("C", "D")  # plain nn.Parameters in safari's SSKernelDiag and H3 layer


def safari_parameter_groups(model: torch.nn.Module, weight_decay: float, lr: float) -> list[dict]:
    """safari's AdamW groups: the family's SSM parameters but C and D (the diagonal SSMs' dt, A and B, a trainable
    shift B) at min(1e-3, lr) without decay, the rest decayed."""
    undecayed = {name for name in ssm_parameter_names(model)
                 if name.rpartition(".")[2] not in SAFARI_DECAYED_SSM_PARAMETERS}
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    groups = [
        {"params": [p for n, p in named if n not in undecayed], "weight_decay": weight_decay, "lr": lr},
        {"params": [p for n, p in named if n in undecayed], "weight_decay": 0.0,
         "lr": min(DEFAULT_MAX_SSM_LEARNING_RATE, lr)},
    ]
    return [group for group in groups if group["params"]]


def single_parameter_group(model: torch.nn.Module, weight_decay: float, lr: float) -> list[dict]:
    """Zoology's AdamW (zoology/train.py): ``model.parameters()``, every one decayed, one learning rate."""
    return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay, "lr": lr}]


DECAY_GROUP_TEXT = {
    "family": "not on norms, biases and SSM parameters",
    "safari": "on every parameter but the SSMs' dt, A and B, as safari",
    "all": "on every parameter, one learning rate, as Zoology",
}
DECAY_GROUPS = {
    # the family's: no decay on norms, biases and SSM parameters (those at min(1e-3, lr))
    "family": parameter_groups,
    "safari": safari_parameter_groups,
    "all": single_parameter_group,
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A paper's training protocol: a fixed training set, passes over it, AdamW and a learning-rate schedule.

    No recipe clips gradients (safari: ``gradient_clip_val: 0.0``; Zoology's trainer has none). Schedules:
    ``linear_warmup`` (safari's, transformers' function of that name) and ``cosine_warmup_timm`` (safari's: timm's
    CosineLRScheduler as its config sets it, see ``timm_cosine_schedule``) warm up over ``ceil(epochs / 10)``
    epochs (safari's formula, 10% of the steps) and are stepped every step; ``cosine_per_epoch`` is torch's
    CosineAnnealingLR over the epochs, stepped every epoch, without warm-up (Zoology).
    """

    source: str
    train_examples: int
    test_examples: int
    epochs: int
    batch_size: int
    learning_rates: tuple[float, ...]  # with several, each is run and the best test accuracy reported (Zoology)
    weight_decay: float
    betas: tuple[float, float]
    schedule: str
    shuffle: bool  # a new order of the training set every epoch (safari's DataLoader) or the same one (Zoology)
    min_lr_ratio: float = 0.0  # the cosine's floor as a fraction of the peak
    warmup_start_lr: float = 0.0  # where the warm-up of cosine_warmup_timm starts (safari: timm's warmup_lr_init)
    early_stop_accuracy: float | None = None  # stop once test accuracy passes this (Zoology: 0.99)
    embedding_dropout: float = 0.0  # on the token embeddings while training (safari's embed_dropout)
    attention_dropout: float = 0.0  # on the attention weights while training (safari's attn_cfg.dropout)
    decay_groups: str = "family"  # which parameters are decayed: see DECAY_GROUPS
    order_seed_offset: int = 0  # the batch order's generator is seeded with the run's seed plus this

    def __post_init__(self):
        if self.decay_groups not in DECAY_GROUPS:
            raise ValueError(f"decay_groups={self.decay_groups!r}: expected one of {sorted(DECAY_GROUPS)}")

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.train_examples / self.batch_size)  # the last batch may be short (no drop_last)

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def summary(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "steps_per_epoch": self.steps_per_epoch, "steps": self.steps}


# The dropout is the models' in safari's configs (h3.yaml, s4d.yaml, transformer.yaml of each task): 0.1 on the
# embeddings of every model, 0.1 on the transformer's attention weights, no residual dropout.
SAFARI_ASSOCIATIVE_RECALL = Recipe(
    source="HazyResearch/safari configs/experiment/synthetics/associative_recall/{base,vocab_size_10,h3,transformer}"
           ".yaml",
    train_examples=5000, test_examples=500, epochs=200, batch_size=32, learning_rates=(5e-4,), weight_decay=0.1,
    betas=(0.9, 0.999), schedule="linear_warmup", shuffle=True, embedding_dropout=0.1, attention_dropout=0.1,
    decay_groups="safari",
)
# safari's scheduler/cosine_warmup_timm with induction_head/base.yaml's settings: warmup_t 10% of the steps,
# warmup_lr_init 1e-6, lr_min 0.1 lr, t_initial all the steps, t_in_epochs False.
SAFARI_INDUCTION_HEAD = dataclasses.replace(
    SAFARI_ASSOCIATIVE_RECALL,
    source="HazyResearch/safari configs/experiment/synthetics/induction_head/{base,h3,transformer}.yaml",
    epochs=400, schedule="cosine_warmup_timm", min_lr_ratio=0.1, warmup_start_lr=1e-6,
)
ZOOLOGY_MQAR = Recipe(
    source="HazyResearch/zoology zoology/experiments/paper_configs/iclr24_zoology_figure2/configs.py, zoology/train.py",
    train_examples=100_000, test_examples=3_000, epochs=64, batch_size=512,
    learning_rates=tuple(10 ** (-4 + 2 * i / 3) for i in range(4)),  # np.logspace(-4, -2, 4)
    weight_decay=0.1, betas=(0.9, 0.999), schedule="cosine_per_epoch", shuffle=False, early_stop_accuracy=0.99,
    embedding_dropout=0.1,  # zoology/config.py ModelConfig.embed_dropout
    decay_groups="all",  # zoology/train.py: AdamW(model.parameters(), lr, weight_decay)
)
SAFARI_DATA_SEED = 0  # safari's ICLDataModule seed: one data set for every training seed, train drawn before test
ZOOLOGY_DATA_SEED = 123  # Zoology's DataConfig seed
RECALL_LAYERS, RECALL_ATTENTION_HEADS = 2, 1  # both papers' models: two layers, one attention head
MQAR_VOCAB = 8192
PROGRESS_LINES = 16  # per training run of the fixed-set recipes: the log's progress lines


@dataclasses.dataclass(frozen=True)
class SyntheticTask:
    """One row of the synthetic section: data, the floor heuristic's candidates, recipe and the paper's figures."""

    description: str
    generate: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (num_examples, generator=, loss_positions=)
    vocab_size: int
    length: int  # tokens the model reads
    answer_tokens: range  # what the floor heuristic may predict
    floor_heuristic: str
    recipe: Recipe
    paper: dict[str, tuple[float, str]]  # model -> (accuracy, the paper's model), H3 paper table 2


_PAPER_MODELS = {"h3:pure": "H3", "h3:pure:no_shift": "S4D", "llama": "attention"}
SYNTHETIC_TASKS = {
    "induction_head": SyntheticTask(
        description="H3 paper: vocabulary 20 (18 ordinary tokens, the trigger => and an unused no-op), 30 tokens "
                    "with the trigger at a random position, then the trigger again; answer: the token after the "
                    "first trigger",
        generate=functools.partial(induction_head, vocab_size=20, input_seq_len=30), vocab_size=20, length=31,
        answer_tokens=RecallVocabulary(20).ordinary, floor_heuristic="the most frequent ordinary token of the context",
        recipe=SAFARI_INDUCTION_HEAD,
        paper={"h3:pure": (1.0, "H3"), "h3:pure:no_shift": (0.356, "S4D"), "llama": (1.0, "attention")},
    ),
    "associative_recall": SyntheticTask(
        description="H3 paper: vocabulary 10 (4 keys, 4 values, => and an unused no-op), 10 key-value pairs, =>, "
                    "a key that occurred; answer: its value",
        generate=functools.partial(associative_recall, vocab_size=10, num_pairs=10), vocab_size=10, length=22,
        answer_tokens=RecallVocabulary(10).values, floor_heuristic="the most frequent value of the context",
        recipe=SAFARI_ASSOCIATIVE_RECALL,
        paper={"h3:pure": (0.998, "H3"), "h3:pure:no_shift": (0.86, "S4D"), "llama": (1.0, "attention")},
    ),
    "associative_recall_5x5": SyntheticTask(
        description="this project's harder variant: vocabulary 10 all keys or values (5 keys, 5 values), 9 pairs, "
                    "no separator, the query last; on the paper's associative-recall recipe",
        generate=functools.partial(associative_recall_without_separator, vocab_size=10, length=20), vocab_size=10,
        length=20, answer_tokens=range(5, 10), floor_heuristic="the most frequent value of the context",
        recipe=SAFARI_ASSOCIATIVE_RECALL, paper={},
    ),
}
# Zoology figure 2 (its README's plot; no table is published), read off by eye: ((length, pairs), width) -> model.
# Its H3 stands beside ours and beside `h3:pure:zoology`, its own MQAR H3 rebuilt from the family's layers.
ZOOLOGY_FIGURE_2 = {
    setting: {"llama": 0.98, "h3:pure": h3, "h3:pure:zoology": h3}
    for setting, h3 in {((64, 4), 64): 0.91, ((64, 4), 128): 0.98, ((128, 8), 64): 0.25, ((128, 8), 128): 0.73}.items()
}


def run_recipe(recipe: Recipe, args: argparse.Namespace, section: str) -> Recipe:
    """The recipe as run: the papers' one scaled by ``--budget_fraction`` and the command's overrides."""
    overrides = {"epochs": max(1, round(recipe.epochs * args.budget_fraction))}
    for field in ("train_examples", "test_examples", "learning_rates"):
        value = getattr(args, f"{section}_{field}", None)
        if value is not None:
            overrides[field] = tuple(value) if field == "learning_rates" else value
    if args.decay_groups is not None:
        overrides["decay_groups"] = args.decay_groups
    if args.order_seed_offset:
        overrides["order_seed_offset"] = args.order_seed_offset
    return dataclasses.replace(recipe, **overrides)


def budget_statement(paper: Recipe, run: Recipe) -> str:
    """What was run against the paper, in words."""
    if run == paper:
        return f"the paper's, {paper.epochs} epochs of {paper.train_examples:,} sequences ({paper.steps:,} steps)"
    statement = (f"{run.epochs} of the paper's {paper.epochs} epochs over {run.train_examples:,} of its "
                 f"{paper.train_examples:,} training sequences: {run.steps:,} of {paper.steps:,} steps "
                 f"({run.steps / paper.steps:.2%}); test set {run.test_examples:,} of {paper.test_examples:,}")
    if run.learning_rates != paper.learning_rates:
        statement += (f"; learning rates {', '.join(f'{lr:.3g}' for lr in run.learning_rates)} "
                      f"(the paper's: {', '.join(f'{lr:.3g}' for lr in paper.learning_rates)})")
    if run.decay_groups != paper.decay_groups:
        statement += (f"; weight decay {DECAY_GROUP_TEXT[run.decay_groups]} "
                      f"(the paper's: {DECAY_GROUP_TEXT[paper.decay_groups]})")
    if run.order_seed_offset:
        statement += (f"; the batch order drawn from seed + {run.order_seed_offset} (the initial weights and dropout "
                      "from the seed)")
    return statement


# ----------------------------------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------------------------------
def scored_logits(model, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (k, vocab) at the k scored positions (targets != -100) and their targets (k,).

    The output head runs on those positions only: the numbers of the full logits there, without the (b, t, vocab)
    tensor, which dominates MQAR's cost (vocabulary 8192, a few scored queries per sequence).
    """
    scored = targets != IGNORE_INDEX
    hidden = model.base_model(input_ids=inputs, use_cache=False).last_hidden_state  # (b, t, d)
    return model.get_output_embeddings()(hidden[scored]), targets[scored]


def causal_loss(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy at the scored positions against the aligned targets."""
    logits, labels = scored_logits(model, inputs, targets)
    return F.cross_entropy(logits.float(), labels)


def timm_cosine_schedule(optimizer: torch.optim.Optimizer, warmup: int, steps: int, floor: float,
                         warmup_start_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """timm's CosineLRScheduler as safari's ``cosine_warmup_timm`` runs it (one cycle, ``warmup_prefix`` False,
    stepped every step): a linear warm-up from ``warmup_start_lr`` to each group's rate over ``warmup`` steps,
    then the cosine of the whole run from that rate to ``floor`` (a learning rate, the same for every group),
    joined at step ``warmup`` where it already stands below the peak (0.978 of it at 10% with a floor of 0.1),
    not restarted there as transformers' cosine with warm-up is; ``floor`` from ``steps`` on."""
    def learning_rate(peak: float) -> Callable[[int], float]:
        def multiplier(step: int) -> float:
            if step < warmup:
                return (warmup_start_lr + step * (peak - warmup_start_lr) / warmup) / peak
            if step < steps:
                return (floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * step / steps))) / peak
            return floor / peak
        return multiplier

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [learning_rate(group["lr"])
                                                         for group in optimizer.param_groups])


def learning_rate_schedule(optimizer: torch.optim.Optimizer, recipe: Recipe):
    """(scheduler, "step" or "epoch": when it is stepped) of ``recipe`` over its epochs (see ``Recipe``).

    The recipe's learning rate, of which ``min_lr_ratio`` is a fraction, is the largest of the groups' (the others
    are the SSMs' min(1e-3, lr)).
    """
    warmup = recipe.steps_per_epoch * math.ceil(recipe.epochs / 10)
    if recipe.schedule == "linear_warmup":
        return get_linear_schedule_with_warmup(optimizer, warmup, recipe.steps), "step"
    if recipe.schedule == "cosine_warmup_timm":
        floor = recipe.min_lr_ratio * max(group["lr"] for group in optimizer.param_groups)
        return timm_cosine_schedule(optimizer, warmup, recipe.steps, floor, recipe.warmup_start_lr), "step"
    if recipe.schedule == "cosine_per_epoch":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs, eta_min=0.0), "epoch"
    raise ValueError(f"unknown schedule {recipe.schedule!r}")


def recipe_optimizer(model: torch.nn.Module, recipe: Recipe, lr: float) -> torch.optim.AdamW:
    """AdamW with the recipe's betas, weight decay and parameter groups (``DECAY_GROUPS[recipe.decay_groups]``; the
    family's spare norms, biases and SSM parameters and give the SSMs min(1e-3, lr), as safari's H3 and S4D layers)."""
    return torch.optim.AdamW(DECAY_GROUPS[recipe.decay_groups](model, recipe.weight_decay, lr), betas=recipe.betas)


@contextlib.contextmanager
def embedding_dropout(model: torch.nn.Module, p: float):
    """Dropout ``p`` on the output of ``model.get_input_embeddings()`` in training mode, the same for every model
    (safari's ``embed_dropout``, Zoology's; Llama has no such field)."""
    if not p:
        yield
        return
    hook = model.get_input_embeddings().register_forward_hook(
        lambda module, args, output: F.dropout(output, p, module.training))
    try:
        yield
    finally:
        hook.remove()


def training_step(model, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """One AdamW step on the mean next-token loss at the scored positions (no clipping); returns the loss."""
    loss = causal_loss(model, inputs, targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def train_fixed_set(model, train_set: tuple[torch.Tensor, torch.Tensor], test_set: tuple[torch.Tensor, torch.Tensor],
                    recipe: Recipe, lr: float, seed: int, on_epoch: Callable[[int, float, float], None] | None = None,
                    checkpoint: Path | None = None) -> dict:
    """``recipe.epochs`` passes over ``train_set`` (inputs, aligned targets), test accuracy after each epoch.

    ``recipe_optimizer``, ``learning_rate_schedule``, ``training_step`` and the recipe's ``embedding_dropout``
    (its attention dropout is the model's config: ``recall_models``); ``seed`` orders the batches.
    ``on_epoch(epoch, accuracy, mean training loss)`` is called after each epoch's evaluation (epochs count from 1).
    With ``checkpoint``, the whole training state (weights, AdamW, schedule, the batch order's generator and torch's,
    which draws the dropout masks, and the figures so far) is written there atomically after every epoch, and a run
    that finds the file takes up from it: killed and rerun, it ends where the uninterrupted run ends.
    Returns the final and best test accuracy, the per-epoch accuracies and losses, the seconds per training step
    (evaluation excluded) and the epochs after which it was resumed.
    """
    inputs, targets = train_set
    optimizer = recipe_optimizer(model, recipe, lr)
    schedule, interval = learning_rate_schedule(optimizer, recipe)
    order_generator = torch.Generator().manual_seed(seed + recipe.order_seed_offset)
    progress = {"accuracy_by_epoch": [], "train_loss_by_epoch": [], "train_seconds": 0.0, "steps": 0,
                "resumed_after_epochs": []}
    restored = _restore_training_state(checkpoint, model, optimizer, schedule, order_generator)
    if restored is not None:
        progress = restored
        progress["resumed_after_epochs"].append(len(progress["accuracy_by_epoch"]))
    accuracy_by_epoch, loss_by_epoch = progress["accuracy_by_epoch"], progress["train_loss_by_epoch"]

    def finished() -> bool:
        stopped = (recipe.early_stop_accuracy is not None and accuracy_by_epoch
                   and accuracy_by_epoch[-1] > recipe.early_stop_accuracy)
        return len(accuracy_by_epoch) == recipe.epochs or bool(stopped)

    with embedding_dropout(model, recipe.embedding_dropout):
        while not finished():
            model.train()
            begin = time.perf_counter()
            order = (torch.randperm(len(inputs), generator=order_generator) if recipe.shuffle
                     else torch.arange(len(inputs)))
            epoch_loss = 0.0
            for batch in order.split(recipe.batch_size):
                epoch_loss += training_step(model, optimizer, inputs[batch], targets[batch])
                if interval == "step":
                    schedule.step()
                progress["steps"] += 1
            if interval == "epoch":
                schedule.step()
            progress["train_seconds"] += time.perf_counter() - begin
            loss_by_epoch.append(epoch_loss / recipe.steps_per_epoch)
            accuracy_by_epoch.append(evaluate_accuracy(model, *test_set, batch_size=EVAL_BATCH_SIZE))
            if checkpoint is not None:
                _save_training_state(checkpoint, model, optimizer, schedule, order_generator, progress)
            if on_epoch is not None:
                on_epoch(len(accuracy_by_epoch), accuracy_by_epoch[-1], loss_by_epoch[-1])
    return {"accuracy": accuracy_by_epoch[-1], "best_accuracy": max(accuracy_by_epoch),
            "epochs": len(accuracy_by_epoch), "steps": progress["steps"], "train_seconds": progress["train_seconds"],
            "seconds_per_step": progress["train_seconds"] / progress["steps"], "final_train_loss": loss_by_epoch[-1],
            "accuracy_by_epoch": accuracy_by_epoch, "train_loss_by_epoch": loss_by_epoch,
            "resumed_after_epochs": progress["resumed_after_epochs"]}


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then renamed over it: a kill leaves the old or the new."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _save_training_state(path: Path, model, optimizer: torch.optim.Optimizer, schedule, generator: torch.Generator,
                         progress: dict) -> None:
    """Everything a run needs to go on as if never stopped, written atomically: weights, AdamW, the schedule, the
    generator its batches come from, torch's (which draws the dropout masks) and its figures so far."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
             "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "progress": progress}
    _write_atomically(path, functools.partial(torch.save, state))


def _restore_training_state(path: Path | None, model, optimizer: torch.optim.Optimizer, schedule,
                            generator: torch.Generator) -> dict | None:
    """Loads what `_save_training_state` wrote into the run's objects and returns its progress; None without a file."""
    if path is None or not path.exists():
        return None
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return state["progress"]


def train_on_stream(model, next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], steps: int, lr: float,
                    weight_decay: float, checkpoint: Path | None = None, generator: torch.Generator | None = None,
                    checkpoint_every: int | None = None) -> dict:
    """``steps`` AdamW steps on fresh ``next_batch()`` (the LM section): betas (0.9, 0.95), linear warm-up over 10%,
    cosine decay, gradient clipping at 1. Returns the last losses, the time and the steps after which it was resumed.

    With ``checkpoint``, the training state (as ``train_fixed_set`` keeps it, with ``generator``, the one
    ``next_batch`` draws from) is written there atomically every ``checkpoint_every`` steps (default: a twentieth
    of the run), and a run that finds the file takes up from it: killed and rerun, it ends where the uninterrupted
    run ends.
    """
    if checkpoint is not None and generator is None:
        raise ValueError("train_on_stream: a checkpoint needs the generator that next_batch draws from")
    every = checkpoint_every or max(1, steps // 20)
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay, lr), betas=(0.9, 0.95))
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 10), steps)
    progress = {"losses": [], "train_seconds": 0.0, "resumed_after_steps": []}
    restored = _restore_training_state(checkpoint, model, optimizer, schedule, generator)
    if restored is not None:
        progress = restored
        progress["resumed_after_steps"].append(len(progress["losses"]))
    losses = progress["losses"]
    model.train()
    begin = time.perf_counter()
    while len(losses) < steps:
        inputs, targets = next_batch()
        loss = causal_loss(model, inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if checkpoint is not None and len(losses) % every == 0 and len(losses) < steps:
            now = time.perf_counter()
            progress["train_seconds"] += now - begin
            begin = now
            _save_training_state(checkpoint, model, optimizer, schedule, generator, progress)
    progress["train_seconds"] += time.perf_counter() - begin
    tail = losses[-max(1, steps // 20):]
    return {"final_train_loss": sum(tail) / len(tail), "train_seconds": progress["train_seconds"],
            "seconds_per_step": progress["train_seconds"] / steps,
            "resumed_after_steps": progress["resumed_after_steps"]}


@torch.no_grad()
def evaluate_accuracy(model, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> float:
    """Accuracy over all scored positions of the test set, batch by batch."""
    model.eval()
    correct = total = 0
    for start in range(0, len(inputs), batch_size):
        logits, labels = scored_logits(model, inputs[start:start + batch_size], targets[start:start + batch_size])
        correct += int((logits.argmax(-1) == labels).sum())
        total += len(labels)
    return correct / total


@torch.no_grad()
def evaluate_perplexity(model, blocks: torch.Tensor, batch_size: int) -> float:
    """exp(mean next-token NLL) over every token of ``blocks`` (n, seq_len + 1)."""
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start:start + batch_size]
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        total_nll += F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum").item()
        total_tokens += batch[:, 1:].numel()
    return perplexity(total_nll / total_tokens)


def summarize(values: list[float]) -> dict[str, object]:
    """Mean, sample standard deviation (None for one seed: no spread is known), range and count."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values), "values": values}


def _shape(vocab_size: int, width: int, layers: int, num_heads: int, max_length: int) -> ModelShape:
    return ModelShape(vocab_size=vocab_size, hidden_size=width, num_layers=layers, num_heads=num_heads,
                      intermediate_size=4 * width, max_length=max_length)


def _heads(width: int, head_dim: int) -> int:
    if width % head_dim:
        raise ValueError(f"width {width} is not a multiple of --head_dim {head_dim}")
    return width // head_dim


class RunStore:
    """What a killed command needs to go on: one folder per training run under ``root``, holding ``spec.json``
    (everything that determines the run), ``checkpoint.pt`` while a fixed-set recipe or the LM section trains
    (``train_fixed_set``, ``train_on_stream``), then ``result.json`` once the run finished, when the checkpoint is
    deleted (a ListOps run is only read back once finished). The folder's name ends in a digest of
    the spec, so the same command rerun into the same ``--output_dir`` reads back the runs that finished and takes
    up the one that was training, and a run whose recipe, data, model or seed differs gets a folder of its own.
    ``main`` removes the store once the command has written its report: a finished command rerun trains afresh."""

    CHECKPOINT = "checkpoint.pt"

    def __init__(self, root: Path):
        self.root = root

    def folder(self, spec: dict) -> Path:
        text = json.dumps(spec, sort_keys=True, default=str)
        name = re.sub(r"[^A-Za-z0-9.=_-]+", "_", " ".join(str(spec[key]) for key in ("label", "model", "seed")))
        folder = self.root / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
        if not folder.exists():
            folder.mkdir(parents=True)
            (folder / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))
        return folder

    @staticmethod
    def result(folder: Path) -> dict | None:
        path = folder / "result.json"
        return json.loads(path.read_text()) if path.exists() else None

    def finish(self, folder: Path, figures: dict) -> None:
        _write_atomically(folder / "result.json", lambda path: path.write_text(json.dumps(figures, indent=2)))
        (folder / self.CHECKPOINT).unlink(missing_ok=True)


def _digest(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' shapes and values: the data a run trained and was tested on, in its spec."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _run_seeds(model_name: str, shape: ModelShape, seeds: list[int],
               run: Callable[[torch.nn.Module, int, Path | None], dict], metric: str, log: Callable[[str], None],
               label: str, store: RunStore | None = None, spec: dict | None = None, **overrides) -> dict:
    """Builds and trains one fresh model per seed; ``run(model, seed, folder)`` returns the per-seed figures, where
    ``folder`` is the run's ``store`` folder (None without a store). ``spec`` holds what else determines the run
    (recipe, data...) beside the model, shape, seed and ``overrides``, config fields of the model (dropout). A seed
    that ``store`` holds the result of is read back, not trained again."""
    per_seed = []
    for seed in seeds:
        folder = None
        if store is not None:
            folder = store.folder({**(spec or {}), "label": label, "model": model_name, "seed": seed,
                                   "shape": dataclasses.asdict(shape), "config_overrides": overrides})
        figures = None if folder is None else store.result(folder)
        if figures is not None:
            log(f"  {label} {model_name} seed {seed}: {metric} {figures[metric]:.4f} (finished earlier: {folder})")
        else:
            torch.manual_seed(seed)
            figures = run(build_model(model_name, shape, **overrides), seed, folder)
            if store is not None:
                store.finish(folder, figures)
            log(f"  {label} {model_name} seed {seed}: {metric} {figures[metric]:.4f} "
                f"({figures.get('train_seconds', 0):.0f} s)")
        per_seed.append({"seed": seed, **figures})
    return {"parameters": describe(model_name, shape)["parameters"], metric: summarize([r[metric] for r in per_seed]),
            "seconds_per_step": statistics.fmean(r["seconds_per_step"] for r in per_seed), "per_seed": per_seed}


def _overlap(train_inputs: torch.Tensor, test_inputs: torch.Tensor) -> int:
    """Test sequences that also occur in the training set (neither paper's code excludes them)."""
    seen = {tuple(row) for row in train_inputs.tolist()}
    return sum(tuple(row) in seen for row in test_inputs.tolist())


def recall_models(models: list[str], shape: ModelShape, seeds: list[int], recipe: Recipe,
                  train_set: tuple[torch.Tensor, torch.Tensor], test_set: tuple[torch.Tensor, torch.Tensor],
                  log: Callable[[str], None], label: str, store: RunStore | None = None) -> dict:
    """Every model at every learning rate of ``recipe``; a model's figures are those of its best learning rate.

    Logs the test accuracy and training loss every ``recipe.epochs // PROGRESS_LINES`` epochs of each run (an MQAR
    run at the paper's budget takes hours on a CPU); ``_run_seeds`` logs where the run ended. With ``store``, each
    run checkpoints every epoch in its folder and one that finished earlier is read back (``RunStore``).
    """
    results = {}
    every = max(1, recipe.epochs // PROGRESS_LINES)
    data = _digest(*train_set, *test_set) if store is not None else None
    for name in models:
        by_lr = {}
        for lr in recipe.learning_rates:
            run_label = f"{label} lr {lr:.2g}"

            def run(model: torch.nn.Module, seed: int, folder: Path | None, lr: float = lr,
                    prefix: str = f"{run_label} {name}") -> dict:
                def on_epoch(epoch: int, accuracy: float, loss: float) -> None:
                    if epoch % every == 0:
                        log(f"  {prefix} seed {seed} epoch {epoch}/{recipe.epochs}: "
                            f"accuracy {accuracy:.4f}, training loss {loss:.4f}")

                checkpoint = None if folder is None else folder / RunStore.CHECKPOINT
                if checkpoint is not None and checkpoint.exists():
                    log(f"  {prefix} seed {seed}: taking up the run from {checkpoint}")
                return train_fixed_set(model, train_set, test_set, recipe, lr, seed, on_epoch=on_epoch,
                                       checkpoint=checkpoint)

            by_lr[lr] = _run_seeds(name, shape, seeds, run, "accuracy", log, run_label, store,
                                   {"recipe": recipe.summary(), "learning_rate": lr, "data_sha256": data},
                                   attention_dropout=recipe.attention_dropout)
        best = max(by_lr, key=lambda lr: by_lr[lr]["accuracy"]["mean"])
        results[name] = {**by_lr[best], "learning_rate": best}
        if len(by_lr) > 1:
            results[name]["by_learning_rate"] = {f"{lr:.3g}": entry for lr, entry in by_lr.items()}
    return results


# ----------------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------------
def read_data_file(path: Path, task_name: str, task, recipe: Recipe) -> tuple[tuple, tuple, str]:
    """The training and test sets (inputs, targets) of ``task_name`` from a file that safari_train.py's
    ``--write_data`` writes (safari's own sets), checked against the task's shapes and vocabulary and the recipe's
    set sizes."""
    data = torch.load(path, weights_only=True)
    if data.get("task") != task_name:
        raise SystemExit(f"--synthetic_data_file {path} holds the sets of {data.get('task')!r}, not {task_name!r}")
    sets = tuple(data["train"]), tuple(data["test"])
    for name, (inputs, targets), size in zip(("train", "test"), sets, (recipe.train_examples, recipe.test_examples)):
        ids_fit = 0 <= inputs.min() <= inputs.max() < task.vocab_size
        if inputs.shape != targets.shape or inputs.shape != (size, task.length) or not ids_fit:
            raise SystemExit(f"--synthetic_data_file {path}: its {name} inputs {tuple(inputs.shape)} (ids "
                             f"{inputs.min()}..{inputs.max()}) are not {size} sequences of {task.length} ids below "
                             f"{task.vocab_size} with targets of the same shape")
    return *sets, f"{path.name}: {data['source']}"


def synthetic_section(args: argparse.Namespace, models: list[str], log: Callable[[str], None],
                      store: RunStore | None = None) -> dict:
    results = {}
    for task_name in args.synthetic_tasks:
        task = SYNTHETIC_TASKS[task_name]
        recipe = run_recipe(task.recipe, args, "synthetic")
        if args.synthetic_data_file is None:
            data = torch.Generator().manual_seed(args.synthetic_data_seed)
            train_set = task.generate(recipe.train_examples, generator=data, loss_positions="all")
            test_set = task.generate(recipe.test_examples, generator=data, loss_positions="answer")
            data_source = f"data seed {args.synthetic_data_seed}"
        else:
            train_set, test_set, data_source = read_data_file(args.synthetic_data_file, task_name, task, recipe)
        shape = _shape(task.vocab_size, args.synthetic_width, RECALL_LAYERS, RECALL_ATTENTION_HEADS, task.length)
        log(f"{task_name}: {budget_statement(task.recipe, recipe)}")
        entries = recall_models(models, shape, args.synthetic_seeds, recipe, train_set, test_set, log, task_name,
                                store)
        for name, entry in entries.items():
            entry["paper"] = task.paper.get(name)
        results[task_name] = {
            "description": task.description, "vocab_size": task.vocab_size, "length": task.length,
            "width": args.synthetic_width, "layers": RECALL_LAYERS, "attention_heads": RECALL_ATTENTION_HEADS,
            "paper_recipe": task.recipe.summary(), "recipe": recipe.summary(),
            "budget": budget_statement(task.recipe, recipe),
            "floor": {"accuracy": most_frequent_answer_accuracy(*test_set, task.answer_tokens),
                      "heuristic": task.floor_heuristic},
            "data_seed": None if args.synthetic_data_file else args.synthetic_data_seed, "data": data_source,
            "test_in_train": _overlap(train_set[0], test_set[0]),
            "models": entries,
        }
    return results


def mqar_section(args: argparse.Namespace, models: list[str], log: Callable[[str], None],
                 store: RunStore | None = None) -> dict:
    results = {}
    recipe = run_recipe(ZOOLOGY_MQAR, args, "mqar")
    log(f"mqar: {budget_statement(ZOOLOGY_MQAR, recipe)}")
    for length, pairs in args.mqar_configs:
        data = torch.Generator().manual_seed(ZOOLOGY_DATA_SEED)
        train_set = multi_query_associative_recall(recipe.train_examples, MQAR_VOCAB, length, pairs, data)
        test_set = multi_query_associative_recall(recipe.test_examples, MQAR_VOCAB, length, pairs, data)
        floor = most_frequent_answer_accuracy(*test_set, range(MQAR_VOCAB // 2, MQAR_VOCAB))
        overlap = _overlap(train_set[0], test_set[0])
        for width in args.mqar_widths:
            shape = _shape(MQAR_VOCAB, width, RECALL_LAYERS, RECALL_ATTENTION_HEADS, length)
            label = f"mqar L={length} pairs={pairs} width={width}"
            entries = recall_models(models, shape, args.mqar_seeds, recipe, train_set, test_set, log, label, store)
            for name, entry in entries.items():
                entry["paper"] = ZOOLOGY_FIGURE_2.get(((length, pairs), width), {}).get(name)
            results[f"{length}x{pairs}@{width}"] = {
                "length": length, "pairs": pairs, "width": width, "layers": RECALL_LAYERS,
                "attention_heads": RECALL_ATTENTION_HEADS, "paper_recipe": ZOOLOGY_MQAR.summary(),
                "recipe": recipe.summary(), "budget": budget_statement(ZOOLOGY_MQAR, recipe),
                "floor": {"accuracy": floor, "heuristic": "a uniform pick among the values of the context"},
                "test_in_train": overlap, "models": entries,
            }
    return results


def lm_section(args: argparse.Namespace, models: list[str], log: Callable[[str], None],
               store: RunStore | None = None) -> dict:
    corpus = load_stdlib_corpus(max_chars=args.lm_max_chars)
    tokenizer = train_bpe_tokenizer((row["text"] for row in corpus["train"]), vocab_size=args.lm_vocab_size)
    blocks = {split: torch.tensor(pack_dataset(corpus[split], tokenizer, args.lm_seq_len + 1)["input_ids"])
              for split in ("train", "validation")}
    validation = blocks["validation"][: args.lm_eval_blocks]
    steps = max(1, args.lm_tokens // (args.batch_size * args.lm_seq_len))
    shape = _shape(len(tokenizer), args.lm_width, args.lm_layers, _heads(args.lm_width, args.head_dim),
                   args.lm_seq_len)
    log(f"lm: {len(blocks['train'])} train blocks, {len(validation)} validation blocks of {args.lm_seq_len} tokens, "
        f"vocabulary {len(tokenizer)}, {steps} steps")
    spec = {"train_sha256": _digest(blocks["train"]), "validation_sha256": _digest(validation), "steps": steps,
            "batch_size": args.batch_size, "learning_rate": args.lr, "weight_decay": args.weight_decay}

    def run(model: torch.nn.Module, seed: int, folder: Path | None) -> dict:
        generator = torch.Generator().manual_seed(seed)

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            batch = blocks["train"][torch.randint(0, len(blocks["train"]), (args.batch_size,), generator=generator)]
            return batch[:, :-1], batch[:, 1:]

        checkpoint = None if folder is None else folder / RunStore.CHECKPOINT
        figures = train_on_stream(model, next_batch, steps, args.lr, args.weight_decay, checkpoint, generator)
        return {**figures, "validation_perplexity": evaluate_perplexity(model, validation, batch_size=32)}

    return {"train_tokens": steps * args.batch_size * args.lm_seq_len, "seq_len": args.lm_seq_len,
            "vocab_size": len(tokenizer), "width": args.lm_width, "layers": args.lm_layers,
            "train_blocks": len(blocks["train"]), "validation_tokens": validation[:, 1:].numel(),
            "models": {name: _run_seeds(name, shape, args.lm_seeds, run, "validation_perplexity", log, "lm", store,
                                        spec) for name in models}}


def listops_section(args: argparse.Namespace, models: list[str], log: Callable[[str], None],
                    store: RunStore | None = None) -> dict:
    if not FINETUNE_SCRIPT.exists():
        return {"status": "not run", "reason": f"{FINETUNE_SCRIPT.relative_to(REPO_ROOT)} is absent"}
    tokenizer = listops_tokenizer()
    shape = _shape(len(tokenizer), args.listops_width, args.listops_layers,
                   _heads(args.listops_width, args.head_dim), args.listops_max_length + 2)
    root = args.output_dir / "listops"
    spec = {key: getattr(args, key) for key in ("listops_min_length", "listops_max_length", "listops_train_size",
                                                "listops_steps", "batch_size", "lr")}

    def run(model: torch.nn.Module, seed: int, name: str) -> dict:
        folder = root / name.replace(":", "-") / f"seed{seed}"
        model.save_pretrained(folder / "init")  # fresh weights: the classifier keeps the body, adds a score head
        tokenizer.save_pretrained(folder / "init")
        command = [
            sys.executable, str(FINETUNE_SCRIPT), "--model_name_or_path", str(folder / "init"),
            "--output_dir", str(folder / "run"), "--max_seq_length", str(args.listops_max_length + 1),
            "--listops_min_length", str(args.listops_min_length), "--listops_max_length", str(args.listops_max_length),
            "--listops_train_size", str(args.listops_train_size), "--listops_seed", "0",
            "--max_steps", str(args.listops_steps), "--per_device_train_batch_size", str(args.batch_size),
            "--learning_rate", str(args.lr), "--seed", str(seed), "--eval_strategy", "no", "--save_strategy", "no",
            "--report_to", "none", "--logging_steps", str(max(1, args.listops_steps // 10)),
        ]
        begin = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True)
        eval_results = json.loads((folder / "run" / "eval_results.json").read_text())
        seconds = time.perf_counter() - begin
        return {"accuracy": eval_results["eval_accuracy"], "test_accuracy": eval_results.get("test_accuracy"),
                "majority_class_accuracy": eval_results["majority_class_accuracy"], "train_seconds": seconds,
                "seconds_per_step": seconds / args.listops_steps}

    results = {}
    for name in models:
        try:
            results[name] = _run_seeds(name, shape, args.listops_seeds,
                                       lambda model, seed, folder, name=name: run(model, seed, name), "accuracy", log,
                                       "listops", store, spec)
        except subprocess.CalledProcessError as error:
            results[name] = {"status": "failed", "stderr_tail": error.stderr[-2000:]}
            log(f"  listops {name}: finetune_classification.py failed:\n{error.stderr[-2000:]}")
    return {"lengths": [args.listops_min_length, args.listops_max_length], "steps": args.listops_steps,
            "train_size": args.listops_train_size, "width": args.listops_width, "layers": args.listops_layers,
            "models": results}


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------
def _figure(entry: dict, metric: str, digits: int) -> str:
    if metric not in entry:
        return entry.get("status", "-")
    summary = entry[metric]
    if summary["std"] is None:
        return f"{summary['mean']:.{digits}f} (n=1)"
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f} (n={summary['n']})"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _paper_budget_time(setting: dict, entry: dict) -> str:
    """Seconds per step times the paper's steps, where the run's batches were the paper's size (else "-")."""
    run, paper = setting["recipe"], setting["paper_recipe"]
    if min(run["train_examples"], run["batch_size"]) < paper["batch_size"]:
        return "- (smaller batches)"
    return _duration(entry["seconds_per_step"] * paper["steps"])


def _recipe_text(recipe: dict) -> str:
    schedules = {
        "linear_warmup": "linear warm-up over the first 10% of the steps, then linear decay to 0",
        # runs before the recipe took safari's timm cosine: transformers' cosine, restarted after the warm-up
        "cosine_warmup": f"linear warm-up over the first 10% of the steps, then cosine decay to "
                         f"{recipe['min_lr_ratio']:g} of the peak",
        "cosine_warmup_timm": f"linear warm-up from {recipe.get('warmup_start_lr', 0.0):g} over the first 10% of "
                              f"the steps, then the cosine of the whole run (timm's, entered at 10%) to "
                              f"{recipe['min_lr_ratio']:g} of the peak",
        "cosine_per_epoch": "cosine decay over the epochs to 0 (stepped each epoch), no warm-up",
    }
    rates = ", ".join(f"{lr:.2g}" for lr in recipe["learning_rates"])
    stop = (f", stopped once test accuracy passes {recipe['early_stop_accuracy']}"
            if recipe["early_stop_accuracy"] is not None else "")
    dropout = (f", dropout {recipe.get('embedding_dropout', 0.0):g} on the embeddings and "
               f"{recipe.get('attention_dropout', 0.0):g} on the attention weights")
    return (f"{recipe['train_examples']:,} fixed training sequences, {recipe['epochs']} epochs of batch "
            f"{recipe['batch_size']} ({recipe['steps']:,} steps{', reshuffled each epoch' if recipe['shuffle'] else ''}"
            f"), AdamW lr {rates}{' (best reported)' if len(recipe['learning_rates']) > 1 else ''}, betas "
            f"{tuple(recipe['betas'])}, weight decay {recipe['weight_decay']:g} "
            f"({DECAY_GROUP_TEXT[recipe.get('decay_groups', 'family')]}), no gradient clipping, "
            f"{schedules[recipe['schedule']]}{stop}{dropout}; test set {recipe['test_examples']:,} sequences")


def _synthetic_report(synthetic: dict) -> list[str]:
    parts = ["### H3 synthetic tasks", ""]
    for task_name, task in synthetic.items():
        parts += [f"**{task_name}** ({task['description']}; {task['layers']} layers, width {task['width']}, "
                  f"{task['attention_heads']} attention head). Paper's recipe ({task['paper_recipe']['source']}): "
                  f"{_recipe_text(task['paper_recipe'])}. Run: {task['budget']}. Heuristic floor "
                  f"**{task['floor']['accuracy']:.3f}** ({task['floor']['heuristic']}, query ignored). Test sequences "
                  f"also in the training set: {task['test_in_train']}; "
                  f"{task.get('data', 'data seed ' + str(task.get('data_seed', 0)))}.", "",
                  "| model | parameters | accuracy (last epoch) | best epoch | H3 paper (table 2) | s / step | "
                  "paper's budget here, per seed |", "|---|---|---|---|---|---|---|"]
        for name, entry in task["models"].items():
            paper = f"{entry['paper'][0]:.3f} ({entry['paper'][1]})" if entry.get("paper") else "-"
            best = statistics.fmean(r["best_accuracy"] for r in entry["per_seed"])
            parts.append(f"| {name} | {entry['parameters']:,} | {_figure(entry, 'accuracy', 3)} | {best:.3f} | "
                         f"{paper} | {entry['seconds_per_step']:.4f} | {_paper_budget_time(task, entry)} |")
        parts.append(f"| heuristic floor | | {task['floor']['accuracy']:.3f} | | | | |")
        parts.append("")
    return parts


def _mqar_report(mqar: dict) -> list[str]:
    settings = list(mqar)
    first = mqar[settings[0]]
    parts = ["### MQAR (Zoology)", "",
             f"Vocabulary {MQAR_VOCAB}, {first['layers']} layers, {first['attention_heads']} attention head; columns "
             f"are length x pairs @ width, each with Zoology's figure 2 (read off the plot) beside it. Paper's recipe "
             f"({first['paper_recipe']['source']}): {_recipe_text(first['paper_recipe'])}. Run: {first['budget']}. "
             "Heuristic floor: a uniform pick among the values of the context. Cells: accuracy over the queries of "
             "the test set at the best learning rate (which follows).", "",
             "| model | " + " | ".join(f"{s} | Zoology" for s in settings) + " |",
             "|---|" + "---|---|" * len(settings)]
    for name in first["models"]:
        cells = []
        for setting in settings:
            entry = mqar[setting]["models"][name]
            paper = f"≈{entry['paper']:.2f}" if entry.get("paper") is not None else "-"
            cells.append(f"{_figure(entry, 'accuracy', 3)}, lr {entry['learning_rate']:.2g} | {paper}")
        parts.append(f"| {name} | " + " | ".join(cells) + " |")
    parts.append("| heuristic floor | " + " | ".join(f"{mqar[s]['floor']['accuracy']:.3f} | " for s in settings) + " |")
    parts += ["", "Seconds per training step (in brackets: the paper's budget at that speed, per seed and learning "
              "rate, without early stopping): " + "; ".join(f"{name} " + ", ".join(
                  f"{s} {mqar[s]['models'][name]['seconds_per_step']:.3f} "
                  f"({_paper_budget_time(mqar[s], mqar[s]['models'][name])})" for s in settings)
                  for name in first["models"]), ""]
    return parts


def markdown_report(results: dict) -> str:
    machine = results["machine"]
    load = results["load_average"]
    parts = ["## Quality", "",
             f"Hardware: {machine['cpu']} ({machine['cpu_count']} cores, {machine['torch_threads']} torch threads); "
             f"torch {machine['torch']}, transformers {machine['transformers']}. Load average (1 min) at the start "
             f"{load['start']:.2f}, at the end {load['end']:.2f}: other processes shared the machine when it is above "
             f"the thread count. Command: `{results['command']}` ({results['mode']} mode). Mean ± sample std over "
             "seeds (n = seeds).", ""]
    if results.get("synthetic"):
        parts += _synthetic_report(results["synthetic"])
    if results.get("mqar"):
        parts += _mqar_report(results["mqar"])
    lm = results.get("lm")
    if lm:
        parts += ["### Validation perplexity", "", f"Embedded standard-library corpus, {lm['train_tokens']:,} "
                  f"training tokens per model, BPE vocabulary {lm['vocab_size']}, width {lm['width']}, "
                  f"{lm['layers']} layers, length {lm['seq_len']}.", "",
                  "| model | parameters | perplexity | s / step |", "|---|---|---|---|"]
        for name, entry in lm["models"].items():
            parts.append(f"| {name} | {entry['parameters']:,} | {_figure(entry, 'validation_perplexity', 2)} | "
                         f"{entry['seconds_per_step']:.3f} |")
        parts.append("")
    listops = results.get("listops")
    if listops:
        if "models" not in listops:
            parts += [f"**ListOps**: {listops['status']} ({listops['reason']})", ""]
        else:
            parts += ["### ListOps", "", f"Lengths {listops['lengths'][0]}-{listops['lengths'][1]}, "
                      f"{listops['steps']} steps, width {listops['width']}, {listops['layers']} layers: validation "
                      "accuracy.", "", "| model | parameters | accuracy | majority class |", "|---|---|---|---|"]
            for name, entry in listops["models"].items():
                if "per_seed" not in entry:  # the fine-tuning run failed
                    parts.append(f"| {name} | - | {entry['status']} | - |")
                    continue
                majority = entry["per_seed"][0]["majority_class_accuracy"]  # same validation split for every seed
                parts.append(f"| {name} | {entry['parameters']:,} | {_figure(entry, 'accuracy', 3)} | {majority:.3f} |")
            parts.append("")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
QUICK = dict(seeds=[0], budget_fraction=0.01, synthetic_train_examples=64, synthetic_test_examples=64,
             mqar_configs=[(64, 4), (128, 8)], mqar_widths=[64], mqar_train_examples=64, mqar_test_examples=64,
             mqar_learning_rates=[ZOOLOGY_MQAR.learning_rates[2]], lm_tokens=16_384, lm_width=32,
             lm_max_chars=200_000, lm_vocab_size=512, lm_seq_len=64, lm_eval_blocks=32, listops_steps=20,
             listops_max_length=40, listops_train_size=200)
FULL = dict(budget_fraction=1.0, mqar_configs=[(64, 4), (128, 8)], mqar_widths=[64, 128], lm_tokens=5_000_000,
            lm_width=128, lm_max_chars=5_000_000, lm_vocab_size=4096, lm_seq_len=256, lm_eval_blocks=256,
            listops_steps=2000, listops_max_length=500, listops_train_size=5000)


def _mqar_configs(text: str) -> list[tuple[int, int]]:
    """"64:4,128:8" -> [(64, 4), (128, 8)]."""
    try:
        return [(int(length), int(pairs)) for length, pairs in (part.split(":") for part in text.split(",") if part)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LENGTH:PAIRS,... (e.g. 64:4,128:8), got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sets, 1%% of the epochs, one seed: checks that every section and task runs")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/bench/quality"),
                        help="quality.json and quality.md; while the command runs, runs/ holds what a rerun of the "
                             "same command needs to go on after a kill")
    parser.add_argument("--sections", type=choice_list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--models", type=choice_list(MODEL_NAMES),
                        help="models of every section (default: each section's own list, see above)")
    parser.add_argument("--seeds", type=int_list(),
                        help="seeds of every section (default: synthetic and ListOps 0,1,2, MQAR 0, LM 0,1)")
    parser.add_argument("--budget_fraction", type=float,
                        help="fraction of the papers' epochs run by the synthetic and MQAR recipes (full: 1)")
    parser.add_argument("--synthetic_tasks", type=choice_list(tuple(SYNTHETIC_TASKS)), default=list(SYNTHETIC_TASKS))
    parser.add_argument("--synthetic_width", type=int, default=32)
    parser.add_argument("--synthetic_data_seed", type=int, default=SAFARI_DATA_SEED,
                        help="seed of the synthetic tasks' training and test sets, the same for every training seed "
                             f"(default {SAFARI_DATA_SEED}, as safari's dataset.seed)")
    parser.add_argument("--synthetic_data_file", type=Path,
                        help="train on the training and test sets in this file (safari's own: safari_train.py "
                             "--write_data) instead of drawing them; one synthetic task, the file's")
    parser.add_argument("--synthetic_train_examples", type=int, help="fixed training set (paper: 5000)")
    parser.add_argument("--synthetic_test_examples", type=int, help="test sequences (paper: 500)")
    parser.add_argument("--mqar_configs", type=_mqar_configs, help="LENGTH:PAIRS,... (full: 64:4,128:8)")
    parser.add_argument("--mqar_widths", type=int_list(positive_sorted=True), help="(full: 64,128)")
    parser.add_argument("--mqar_train_examples", type=int, help="fixed training set (Zoology: 100000)")
    parser.add_argument("--mqar_test_examples", type=int, help="test sequences (Zoology: 3000)")
    parser.add_argument("--mqar_learning_rates", type=_float_list,
                        help="learning rates tried, the best reported (Zoology: 1e-4,4.64e-4,2.15e-3,1e-2)")
    parser.add_argument("--decay_groups", choices=sorted(DECAY_GROUPS),
                        help="weight-decay groups of the synthetic and MQAR recipes (default: each recipe's own)")
    parser.add_argument("--order_seed_offset", type=int, default=0,
                        help="seed the synthetic and MQAR batch order with each seed plus this, not the seed that "
                             "also draws the initial weights (default 0: the same seed)")
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate of the LM and ListOps sections")
    parser.add_argument("--weight_decay", type=float, default=0.1, help="weight decay of the LM section")
    parser.add_argument("--batch_size", type=int, default=64, help="batch size of the LM and ListOps sections")
    parser.add_argument("--head_dim", type=int, default=16, help="attention head size of the LM and ListOps models")
    parser.add_argument("--lm_tokens", type=int, help="training tokens per model (the equal budget; full: 5M)")
    parser.add_argument("--lm_width", type=int)
    parser.add_argument("--lm_layers", type=int, default=2)
    parser.add_argument("--lm_seq_len", type=int)
    parser.add_argument("--lm_vocab_size", type=int)
    parser.add_argument("--lm_max_chars", type=int, help="characters of the corpus's train split used")
    parser.add_argument("--lm_eval_blocks", type=int, help="validation blocks of lm_seq_len tokens scored")
    parser.add_argument("--listops_steps", type=int)
    parser.add_argument("--listops_min_length", type=int, default=10)
    parser.add_argument("--listops_max_length", type=int)
    parser.add_argument("--listops_train_size", type=int)
    parser.add_argument("--listops_width", type=int, default=64)
    parser.add_argument("--listops_layers", type=int, default=2)
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.seeds == []:
        parser.error("--seeds needs at least one seed")
    if args.synthetic_data_file is not None and len(args.synthetic_tasks) != 1:
        parser.error(f"--synthetic_data_file holds one task's sets: name it alone in --synthetic_tasks, got "
                     f"{','.join(args.synthetic_tasks)}")
    for section, seeds in SECTION_SEEDS.items():
        setattr(args, f"{section}_seeds", args.seeds or seeds)
    if not 0 < args.budget_fraction <= 1:
        parser.error(f"--budget_fraction must be in (0, 1], got {args.budget_fraction}")
    if args.order_seed_offset < 0:
        parser.error(f"--order_seed_offset must be 0 or more (seeds are non-negative), got {args.order_seed_offset}")
    for key in ("batch_size", "head_dim", "synthetic_width", "synthetic_train_examples", "synthetic_test_examples",
                "mqar_train_examples", "mqar_test_examples", "lm_tokens", "lm_seq_len", "lm_eval_blocks",
                "listops_steps"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            parser.error(f"--{key} must be positive, got {getattr(args, key)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    args.output_dir.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    settings = {key: value for key, value in vars(args).items() if key != "output_dir"}
    results: dict = {
        "command": " ".join(["python", "scripts/bench/quality.py", *(sys.argv[1:] if argv is None else argv)]),
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(torch.device("cpu")),
        "load_average": {"start": os.getloadavg()[0]},
        "settings": settings,
        "section_seconds": {},
    }
    runners = {"synthetic": synthetic_section, "mqar": mqar_section, "lm": lm_section, "listops": listops_section}
    store = RunStore(args.output_dir / "runs")
    for section in args.sections:
        log(f"{section}")
        models = args.models or list(SECTION_MODELS[section])
        begin = time.perf_counter()
        results[section] = runners[section](args, models, log, store)
        results["section_seconds"][section] = time.perf_counter() - begin
        (args.output_dir / "quality.json").write_text(json.dumps(results, indent=2, default=str))
    results["load_average"]["end"] = os.getloadavg()[0]
    (args.output_dir / "quality.json").write_text(json.dumps(results, indent=2, default=str))
    (args.output_dir / "quality.md").write_text(markdown_report(results))
    shutil.rmtree(store.root, ignore_errors=True)  # the command finished: a rerun trains afresh (see RunStore)
    log(f"wrote {args.output_dir / 'quality.json'} and quality.md")
    return results


if __name__ == "__main__":
    main()
