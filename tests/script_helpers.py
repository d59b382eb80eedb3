"""Shared by the tests of scripts/: load a script as a module, reset Accelerate between in-process runs, a free port.

Most script tests call a script's `main(argv)` in the pytest process (no interpreter start, no re-import of torch),
and only spawn processes where the behaviour needs them (two DDP ranks, SIGKILL).
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from transformers import AutoConfig, AutoModelForCausalLM

from hamiltonian_transformer import PRESETS
from hamiltonian_transformer.data import train_bpe_tokenizer
from tests.conftest import PYTHON, subprocess_env

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "scripts"
MODEL_TYPES = ["hamiltonian_transformer", "h3"]


def load_script(name: str) -> ModuleType:
    """Import scripts/<name>.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def reset_accelerate_state() -> None:
    """Accelerate keeps process-wide singletons; clear them so that the next in-process run configures its own."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def in_process_run():
    """For tests that call a script's `main` here: fresh Accelerate state, and one thread like the subprocesses
    (`subprocess_env` sets OMP_NUM_THREADS=1), so that in-process and subprocess runs sum in the same order, and
    two busy cores are not oversubscribed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reset_accelerate_state()
    yield
    reset_accelerate_state()
    torch.set_num_threads(threads)


def save_tiny_causal_lm(folder: Path, model_type: str = "hamiltonian_transformer") -> None:
    """A tiny causal LM with a byte-level BPE in `folder`, laid out as pretrain.py leaves it."""
    tokenizer = train_bpe_tokenizer(["def main(argv):\n    return [MAX 2 9 [MIN 4 7 ] 0 ]\n"] * 50, vocab_size=300)
    config = AutoConfig.for_model(model_type, **{**PRESETS[model_type]["tiny"], "vocab_size": len(tokenizer),
                                                 "bos_token_id": tokenizer.bos_token_id,
                                                 "eos_token_id": tokenizer.eos_token_id,
                                                 "pad_token_id": tokenizer.pad_token_id})
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_cpu_ranks(hf_home: Path) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch` prefix that starts a script on two gloo ranks on the CPU, and its environment
    (Accelerate's `--cpu --num_processes 2` would start one process)."""
    env = subprocess_env(ACCELERATE_USE_CPU="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1",
                         HF_HOME=str(hf_home))
    launch = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    return launch, env
