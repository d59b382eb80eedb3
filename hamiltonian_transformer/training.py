"""What runs during training besides the step itself: evaluation of a causal LM, `Trainer`'s time limit, and which
parameters DistributedDataParallel must be told will get no gradient.

The training scripts' other library code has one module per concern: `config_from_flags` (flags to a model config),
`checkpoints` (atomic checkpoints and resume) and `run_outputs` (file names, perplexity, the final folder).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from accelerate import Accelerator
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


@torch.no_grad()
def evaluate_causal_lm(model: torch.nn.Module, dataloader: Iterable[dict[str, torch.Tensor]],
                       accelerator: Accelerator) -> float:
    """Mean token cross-entropy of ``model`` over packed blocks, over all processes.

    Every block has the same length, so the mean of per-block losses is the mean over tokens. Blocks that the
    distributed sampler repeats to even out the processes are dropped by `gather_for_metrics`.
    """
    was_training = model.training
    model.eval()
    losses = []
    for batch in dataloader:
        loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
        losses.append(accelerator.gather_for_metrics(loss.detach().float().repeat(batch["input_ids"].shape[0])))
    model.train(was_training)
    if not losses:
        raise ValueError("the evaluation split gave no batch; it needs at least one block of --seq_len tokens.")
    return torch.cat(losses).mean().item()


def parameters_without_gradient(model: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters that no backward pass through ``model``'s logits reaches.

    DistributedDataParallel must be told that a model has such parameters (``find_unused_parameters=True``), or its
    second step fails waiting for their gradients; told so when there are none, it walks the autograd graph after every
    step and warns. transformers' `Trainer` assumes there are some unless gradient checkpointing is on; Accelerate
    assumes there are none. The Hamiltonian Transformer with the first design's dynamics and one literal Euler step
    per layer has some: the last layer's force moves only the momenta, which the head does not read.

    Found by one forward and backward pass over two tokens in training mode, under a forked RNG (the run's dropout
    masks are not moved); the gradients it made are cleared, so call it before training.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        logits = model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=device), use_cache=False).logits
        logits.float().sum().backward()
    unused = [name for name, param in model.named_parameters() if param.requires_grad and param.grad is None]
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return unused


class TimeLimitCallback(TrainerCallback):
    """Stop `Trainer` training once `minutes` of training time have passed (checked after every optimizer step).

    Under several processes the decision is all-reduced, so that every rank stops at the same step. `stopped_at_step`
    is the step it stopped training at (None while it has not), for the run's record.
    """

    def __init__(self, minutes: float):
        if minutes <= 0:
            raise ValueError(f"the training time limit must be positive, got {minutes} minutes")
        self.seconds = 60 * minutes
        self.start = time.perf_counter()
        self.stopped_at_step: int | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.start = time.perf_counter()
        self.stopped_at_step = None

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        time_up = torch.tensor(float(time.perf_counter() - self.start > self.seconds), device=args.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(time_up, op=torch.distributed.ReduceOp.MAX)
        if time_up.item() > 0:
            control.should_training_stop = True
            self.stopped_at_step = state.global_step
