"""hamiltonian_transformer.training: evaluation of a causal LM over packed blocks."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from hamiltonian_transformer.config_from_flags import build_config
from hamiltonian_transformer.training import evaluate_causal_lm
from tests.script_helpers import in_process_run  # noqa: F401  (a fixture)


@pytest.mark.usefixtures("in_process_run")
def test_evaluation_is_the_mean_over_blocks_with_an_uneven_last_batch():
    accelerator = Accelerator(cpu=True)
    config = build_config("hamiltonian_transformer", "tiny")
    model = AutoModelForCausalLM.from_config(config).eval()
    blocks = torch.randint(0, config.vocab_size, (7, 16))
    with torch.no_grad():
        expected = torch.stack([model(input_ids=b[None], labels=b[None]).loss for b in blocks]).mean().item()
    loader = DataLoader([{"input_ids": b} for b in blocks], batch_size=3)
    model, loader = accelerator.prepare(model, loader)
    assert evaluate_causal_lm(model, loader, accelerator) == pytest.approx(expected, rel=1e-5)
