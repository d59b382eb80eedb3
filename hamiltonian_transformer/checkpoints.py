"""Atomic training checkpoints (Accelerate state) and their discovery on resume.

Checkpoint layout written by `save_checkpoint` (one folder per optimizer step N under the output directory):

    checkpoint-N.tmp/      written by `accelerator.save_state` (all processes), then the marker, then renamed
    checkpoint-N/          model, optimizer, scheduler, RNG states of every process, sampler, `checkpoint_complete.json`

`checkpoint_complete.json` is written last and lists every file with its size, so a folder is usable only when it has
the marker and every listed file is present at its recorded size. The rename is atomic on POSIX filesystems, so a kill
at any moment leaves either a complete `checkpoint-N/` or a `checkpoint-N.tmp/` that discovery skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate import Accelerator

CHECKPOINT_PREFIX = "checkpoint-"
TMP_SUFFIX = ".tmp"
COMPLETE_MARKER = "checkpoint_complete.json"


def checkpoint_step(path: Path) -> int | None:
    """N of a folder named ``checkpoint-N`` (None for any other name, including ``checkpoint-N.tmp``)."""
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
    return int(match.group(1)) if match else None


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, progress: dict[str, Any]) -> Path:
    """Save the full training state for optimizer step ``step`` atomically; call it on every process.

    ``progress`` (JSON-serialisable: epoch, batches seen in the epoch, tokens...) goes into the completion marker,
    which `read_checkpoint_progress` returns on resume. Returns the final folder.
    """
    final = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    tmp = final.with_name(final.name + TMP_SUFFIX)
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)  # a leftover of a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {
            path.relative_to(tmp).as_posix(): path.stat().st_size for path in sorted(tmp.rglob("*")) if path.is_file()
        }
        marker = {"step": step, "progress": progress, "files": files}
        _write_json_durably(tmp / COMPLETE_MARKER, marker)
        if final.exists():  # the same step saved by an earlier run that is being repeated
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def _write_json_durably(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed from, or None when it is complete."""
    if not path.is_dir():
        return "it is not a folder"
    marker_path = path / COMPLETE_MARKER
    if not marker_path.is_file():
        return f"it has no {COMPLETE_MARKER} (the save did not finish)"
    try:
        marker = json.loads(marker_path.read_text())
        files = marker["files"]
        int(marker["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        return f"its {COMPLETE_MARKER} is unreadable ({type(err).__name__}: {err})"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes instead of {size} (truncated or overwritten)"
    return None


def read_checkpoint_progress(path: Path) -> tuple[int, dict[str, Any]]:
    """(step, progress) recorded by `save_checkpoint` in a complete checkpoint."""
    marker = json.loads((Path(path) / COMPLETE_MARKER).read_text())
    return int(marker["step"]), marker["progress"]


def find_latest_checkpoint(output_dir: str | Path, log: Callable[[str], None] = print) -> Path | None:
    """The complete checkpoint with the highest step under ``output_dir``; incomplete ones are skipped, with a line
    through ``log`` saying why."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    for leftover in sorted(root.glob(f"{CHECKPOINT_PREFIX}*{TMP_SUFFIX}")):
        log(f"skipping {leftover}: a partial checkpoint (the run stopped while saving it)")
    candidates = sorted(
        (path for path in root.iterdir() if checkpoint_step(path) is not None), key=checkpoint_step, reverse=True
    )
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log(f"skipping {path}: corrupted or partial checkpoint, {problem}")
    return None


def resolve_resume_checkpoint(
    resume_from_checkpoint: str | None, output_dir: str | Path, log: Callable[[str], None] = print
) -> Path | None:
    """The checkpoint to resume from for ``--resume_from_checkpoint`` (a path or "latest"); None to start afresh.

    "latest" with no complete checkpoint starts from scratch (with a message); an explicit path must be complete.
    """
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        latest = find_latest_checkpoint(output_dir, log)
        if latest is None:
            log(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}; starting from scratch")
        return latest
    path = Path(resume_from_checkpoint)
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"--resume_from_checkpoint {path} cannot be used: {problem}.")
    return path


def prune_checkpoints(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest complete checkpoints; return the deleted folders."""
    complete = sorted(
        (p for p in Path(output_dir).iterdir() if checkpoint_step(p) is not None and checkpoint_problem(p) is None),
        key=checkpoint_step,
    )
    doomed = complete[: max(0, len(complete) - keep)]
    for path in doomed:
        shutil.rmtree(path)
    return doomed
