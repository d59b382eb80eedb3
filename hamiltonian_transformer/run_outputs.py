"""What a training run leaves in its output folder besides the model: file names, metrics, run metadata.

The folder is Hub-ready: `save_final_model` writes weights, config, generation config and tokenizer with
`save_pretrained` (no pickle: no `training_args.bin`, no optimizer state), and `write_run_metadata` the two JSON files
that `hamiltonian_transformer.hub.write_model_card` turns into the model card `README.md`. `training_args.json` also
records how far training went (`RunProgress`: steps done, steps planned, and what stopped it short of the plan).
`scripts/pretrain.py` also appends one JSON object per logging or evaluation event to `TRAINING_LOG_FILE`.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TRAINING_ARGS_FILE = "training_args.json"
EVAL_RESULTS_FILE = "eval_results.json"
TRAINING_LOG_FILE = "training_log.jsonl"


def perplexity(mean_loss: float) -> float:
    """exp(mean token cross-entropy); inf where that overflows a float (and nan for a nan loss)."""
    return math.inf if mean_loss >= math.log(sys.float_info.max) else math.exp(mean_loss)


@dataclass(frozen=True)
class RunProgress:
    """How far a training run went: optimizer steps done out of those planned, and why it stopped before the plan.

    ``stop_reason`` (e.g. "--max_train_minutes 3.0 reached") is kept only when the run was cut short: a time limit
    that falls due at the last step has not changed the result.
    """

    steps: int
    max_steps: int
    stop_reason: str | None = None

    @property
    def cut_short(self) -> bool:
        return self.steps < self.max_steps

    def as_metadata(self) -> dict[str, Any]:
        """The keys of `training_args.json` that record it."""
        return {"steps": self.steps, "max_steps": self.max_steps,
                "stop_reason": self.stop_reason if self.cut_short else None}

    @classmethod
    def from_metadata(cls, training_args: dict[str, Any]) -> RunProgress | None:
        """Read back from `training_args.json`; None for a folder written without it (e.g. by another tool)."""
        steps, max_steps = training_args.get("steps"), training_args.get("max_steps")
        if not isinstance(steps, int) or not isinstance(max_steps, int) or max_steps < 1:
            return None
        return cls(steps, max_steps, training_args.get("stop_reason"))

    def describe(self) -> str:
        """One phrase, e.g. ``450 of 450 planned steps`` or ``90 of 450 planned steps (cut short: ...)``."""
        text = f"{self.steps} of {self.max_steps} planned steps"
        if self.cut_short:
            text += f" (cut short: {self.stop_reason or 'stopped before the planned steps'})"
        return text


def json_ready(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with paths and other objects turned into strings, so that `json.dump` takes it."""
    return {key: value if isinstance(value, (bool, int, float, str, type(None), list, dict)) else str(value)
            for key, value in values.items()}


def save_final_model(
    accelerator: Accelerator,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | Path,
    training_args: dict[str, Any],
    eval_results: dict[str, Any],
    model_id: str | None = None,
) -> None:
    """Write the Hub-ready folder: weights (safetensors), config, generation config, tokenizer, run metadata, and the
    model card `README.md` rendered from them (loading the model by ``model_id``, by default the folder's path).

    Call on every process: with FSDP or DeepSpeed the full state dict is gathered from all of them. This is also how
    `scripts/finetune_classification.py` saves `Trainer`'s model (through `trainer.accelerator`), instead of
    `Trainer.save_model`, which adds a pickle of the TrainingArguments (`training_args.bin`).
    """
    # hub imports this module for the file names.
    from .hub import write_model_card

    accelerator.wait_for_everyone()
    unwrapped: PreTrainedModel = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)
    unwrapped.save_pretrained(
        output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save, state_dict=state_dict
    )
    if accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)
        write_run_metadata(output_dir, training_args, eval_results)
        write_model_card(output_dir, model_id)
    accelerator.wait_for_everyone()


def write_run_metadata(output_dir: str | Path, training_args: dict[str, Any], eval_results: dict[str, Any]) -> None:
    """`training_args.json` and `eval_results.json` in the format `hamiltonian_transformer.hub` reads."""
    for name, values in ((TRAINING_ARGS_FILE, training_args), (EVAL_RESULTS_FILE, eval_results)):
        (Path(output_dir) / name).write_text(json.dumps(json_ready(values), indent=2, sort_keys=True) + "\n")
