"""Shared helpers: tiny configs (hidden 32, 2 layers, vocab 99), subprocess environments, runs that report a hang."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _seed_and_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child python: offline, single-threaded, the repository importable."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


PYTHON = sys.executable


def run_process_tree(command: list[str], timeout: float, **popen_kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run(command, capture_output=True, text=True)` for a command that starts processes of its own
    (`accelerate launch`). If it has not exited after `timeout` seconds, every process of its tree prints the stacks of
    its threads (faulthandler, on SIGABRT) before it is killed, and the test fails showing them: a hang names where it
    hangs, and no rank is left running."""
    env = {**popen_kwargs.pop("env", os.environ), "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               **popen_kwargs)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        launcher = psutil.Process(process.pid)
        descendants = launcher.children(recursive=True)
        tree = [launcher, *descendants]
        # One process at a time, so that their reports do not interleave on the shared stderr; the launcher is
        # stopped meanwhile, so that it cannot take the others down (torch's launcher ends the rest when one fails).
        launcher.suspend()
        for member in [*reversed(descendants), launcher]:
            try:
                member.send_signal(signal.SIGABRT)
                if member is launcher:
                    member.resume()
                _wait_until_dead(member, timeout=10)
            except psutil.NoSuchProcess:
                pass
        for member in tree:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # a process that left the tree (its parent died) still holds the pipes
            stdout, stderr = "", "(no output: the pipes stayed open after the tree was killed)"
        pytest.fail(f"{' '.join(command)} did not exit within {timeout} s; the last of its output, with the stacks "
                    f"of its {len(tree)} processes:\n{stdout[-2000:]}\n{stderr[-12000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _wait_until_dead(member: psutil.Process, timeout: float) -> None:
    """Until `member` has exited (a zombie counts: its parent, stopped, cannot reap it) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if member.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
