"""What a training run leaves in its output folder besides the model: file names, metrics, run metadata.

The folder is Hub-ready: `save_final_model` writes weights, config, generation config and tokenizer with
`save_pretrained`, and `write_run_metadata` the two JSON files that `hamiltonian_transformer.hub` turns into the model
card. `scripts/pretrain.py` also appends one JSON object per logging or evaluation event to `TRAINING_LOG_FILE`.
"""

from __future__ import annotations

import json
import math
import sys
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
) -> None:
    """Write the Hub-ready folder: weights (safetensors), config, generation config, tokenizer, run metadata.

    Call on every process: with FSDP or DeepSpeed the full state dict is gathered from all of them.
    """
    accelerator.wait_for_everyone()
    unwrapped: PreTrainedModel = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)
    unwrapped.save_pretrained(
        output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save, state_dict=state_dict
    )
    if accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)
        write_run_metadata(output_dir, training_args, eval_results)
    accelerator.wait_for_everyone()


def write_run_metadata(output_dir: str | Path, training_args: dict[str, Any], eval_results: dict[str, Any]) -> None:
    """`training_args.json` and `eval_results.json` in the format `hamiltonian_transformer.hub` reads."""
    for name, values in ((TRAINING_ARGS_FILE, training_args), (EVAL_RESULTS_FILE, eval_results)):
        (Path(output_dir) / name).write_text(json.dumps(json_ready(values), indent=2, sort_keys=True) + "\n")
