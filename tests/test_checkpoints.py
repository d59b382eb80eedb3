"""hamiltonian_transformer.checkpoints: atomic checkpoints, their discovery, resume resolution and pruning."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from hamiltonian_transformer.checkpoints import (
    COMPLETE_MARKER,
    checkpoint_problem,
    find_latest_checkpoint,
    prune_checkpoints,
    read_checkpoint_progress,
    resolve_resume_checkpoint,
    save_checkpoint,
)
from tests.script_helpers import in_process_run  # noqa: F401  (a fixture)


@pytest.fixture
def saved_steps(tmp_path, request):
    """An output dir with complete checkpoints at steps 1, 2, 3 of a tiny model; returns (dir, accelerator, model,
    weights after each step)."""
    request.getfixturevalue("in_process_run")
    accelerator = Accelerator(cpu=True)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    weights = {}
    for step in (1, 2, 3):
        model(torch.randn(4, 3)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        save_checkpoint(accelerator, tmp_path, step, {"epoch": 0, "batches_in_epoch": step})
        weights[step] = model.weight.detach().clone()
    return tmp_path, accelerator, model, weights


def test_save_checkpoint_renames_a_complete_folder_with_a_manifest(saved_steps):
    output_dir, _, _, _ = saved_steps
    assert sorted(p.name for p in output_dir.iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    marker = json.loads((output_dir / "checkpoint-3" / COMPLETE_MARKER).read_text())
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= set(marker["files"])
    assert read_checkpoint_progress(output_dir / "checkpoint-3") == (3, {"epoch": 0, "batches_in_epoch": 3})
    assert checkpoint_problem(output_dir / "checkpoint-3") is None


def test_latest_skips_truncated_unmarked_and_temporary_folders_and_loads_the_newest_good_one(saved_steps):
    output_dir, accelerator, model, weights = saved_steps
    optimizer_file = output_dir / "checkpoint-3" / "optimizer.bin"
    optimizer_file.write_bytes(optimizer_file.read_bytes()[:-1])
    (output_dir / "checkpoint-2" / COMPLETE_MARKER).unlink()
    (output_dir / "checkpoint-4.tmp").mkdir()
    messages = []
    latest = find_latest_checkpoint(output_dir, log=messages.append)
    assert latest == output_dir / "checkpoint-1"
    assert any("checkpoint-4.tmp: a partial checkpoint" in m for m in messages)
    assert any("checkpoint-3: corrupted or partial checkpoint, optimizer.bin has" in m for m in messages)
    assert any(f"checkpoint-2: corrupted or partial checkpoint, it has no {COMPLETE_MARKER}" in m for m in messages)
    accelerator.load_state(str(latest))
    torch.testing.assert_close(model.weight, weights[1], rtol=0, atol=0)


def test_a_missing_file_or_unreadable_marker_makes_a_checkpoint_unusable(saved_steps):
    output_dir, _, _, _ = saved_steps
    (output_dir / "checkpoint-3" / "random_states_0.pkl").unlink()
    assert checkpoint_problem(output_dir / "checkpoint-3") == "random_states_0.pkl is missing"
    (output_dir / "checkpoint-2" / COMPLETE_MARKER).write_text("{not json")
    assert "is unreadable" in checkpoint_problem(output_dir / "checkpoint-2")


def test_resume_argument_resolution(saved_steps, tmp_path_factory):
    output_dir, _, _, _ = saved_steps
    assert resolve_resume_checkpoint(None, output_dir) is None
    assert resolve_resume_checkpoint("latest", output_dir) == output_dir / "checkpoint-3"
    assert resolve_resume_checkpoint(str(output_dir / "checkpoint-2"), output_dir) == output_dir / "checkpoint-2"
    messages = []
    assert resolve_resume_checkpoint("latest", tmp_path_factory.mktemp("empty"), log=messages.append) is None
    assert "no complete checkpoint" in messages[0]
    (output_dir / "checkpoint-1" / COMPLETE_MARKER).unlink()
    with pytest.raises(ValueError, match="checkpoint-1 cannot be used: it has no checkpoint_complete.json"):
        resolve_resume_checkpoint(str(output_dir / "checkpoint-1"), output_dir)


def test_prune_keeps_the_newest_complete_checkpoints(saved_steps):
    output_dir, _, _, _ = saved_steps
    deleted = prune_checkpoints(output_dir, keep=2)
    assert [p.name for p in deleted] == ["checkpoint-1"]
    assert sorted(p.name for p in output_dir.iterdir()) == ["checkpoint-2", "checkpoint-3"]
