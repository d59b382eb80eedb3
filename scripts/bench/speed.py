"""Speed and memory of the family against transformers' Llama (SDPA) and Mamba, in one run on one machine.

    python scripts/bench/speed.py --quick                              # tiny sizes, < 3 minutes on 2 CPU cores, JSON
    python scripts/bench/speed.py --output_dir outputs/bench/speed     # full: small preset, JSON + markdown + PNGs

Sections (``--sections``):
  sweep   every model of ``--models`` (see comparators.py; same width, depth and vocabulary, parameter counts in the
          report) at each length of ``--seq_lens`` (``--batch_size`` sequences): forward (no grad) tokens/s and peak
          memory, training-step tokens/s (forward, backward, AdamW step) with MFU and peak memory; then, batch 1,
          after prompts of each ``--prompt_lens``: greedy decode ms per generated token (median gap between tokens,
          prefill reported apart) and peak memory of the whole `generate()` call. Each model runs in its own process
          under a time budget (``--budget_s``, shared out between the stages): a size predicted to overrun its stage
          is skipped, a measurement that overruns anyway is interrupted by a timer, and they are recorded as
          "timeout", as are sizes after one that ran out of memory ("oom"), instead of numbers; a process that dies
          (e.g. at the kernel's OOM killer) leaves "crashed".
  energy  forward+backward time of the Hamiltonian Transformer with its energy term (lambda=0.1) against
          the same model with lambda=0, and of the energy attention op alone against plain SDPA, at
          ``--energy_seq_lens``, plus training-step tokens/s of that model next to the matched Llama. Repetitions
          are interleaved so that machine noise hits both sides alike.

Times are the best of ``--repeats`` runs after a warm-up: load from other processes only ever adds time, so on a
shared machine the best run is the least disturbed one.

MFU = 3 x (forward FLOPs counted by torch's FlopCounterMode) / step time / peak, where the peak is the best measured
square matmul of this machine (fp32 on CPU, bf16 on CUDA). On CUDA timing uses events after synchronisation, models
run under bf16 autocast and memory is `max_memory_allocated`; on CPU everything stays float32 and memory is the peak
resident set above the resident size before the measured call (see measure.py). Every figure also appears as a ratio
to Llama's at the same size. CPU timings on a shared machine are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import multiprocessing
import queue
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import torch
from comparators import MODEL_NAMES, ModelShape, build_model, check_model_name, choice_list, describe, int_list
from measure import (
    count_flops,
    cpu_peak_memory_supported,
    machine_info,
    matmul_peak_flops,
    peak_memory_of,
    synchronize,
    time_call,
)
from transformers import StoppingCriteria, StoppingCriteriaList

from hamiltonian_transformer.energy_attention import (
    augment_keys,
    augment_queries,
    cache_width,
    energy_attention,
    pad_values,
)

# Quick mode runs one thread: tiny models' ops are dominated by thread synchronisation, and a two-thread pool stalls
# whenever another process holds a core of a shared machine.
QUICK = dict(preset="tiny", seq_lens=[128, 256], prompt_lens=[64, 256], new_tokens=8, repeats=3, budget_s=25.0,
             energy_seq_lens=[128, 256], threads=1)
FULL = dict(preset="small", seq_lens=[256, 512, 1024, 2048, 4096, 8192], prompt_lens=[128, 512, 1024, 2048, 4096, 8192],
            new_tokens=16, repeats=3, budget_s=900.0, energy_seq_lens=[1024, 4096], threads=None)
STAGES = ("forward", "train", "decode", "decode_static")
DECODE_STAGES = ("decode", "decode_static")
# generate(cache_implementation="static"): a preallocated KV cache for the attention layers. The Hamiltonian
# Transformer's layers keep growing KV slots (they refuse it) and transformers' Mamba ignores it.
STATIC_CACHE_MODELS = ("h3", "h3:pure", "h3:no_shift", "h3:pure:no_shift", "llama")
SECTIONS = ("sweep", "energy")
# The H3 ablations (no shift, trained shift B, safari's init) matter for quality, not speed (they cost what H3 costs).
SPEED_MODELS = tuple(name for name in MODEL_NAMES if not name.endswith(("no_shift", "shift_b", "safari_init")))
ENERGY_MODEL = "hamiltonian:symplectic_euler"
# H3 against Llama at these training lengths and prompt lengths (the checkpoints of the H3 comparison).
H3_VS_LLAMA_SEQ_LENS = (512, 2048, 8192)
H3_VS_LLAMA_PROMPT_LENS = (128, 4096)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class TokenClock(StoppingCriteria):
    """Stamps the time each generated token is ready (never stops generation)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


# ----------------------------------------------------------------------------------------------------------------------
# One model, in its own process
# ----------------------------------------------------------------------------------------------------------------------
class StageBudget:
    """Skips sizes predicted to overrun the stage's share of the budget.

    The cost of one call grows as size^k from the last measured size: k is fitted to the last two sizes (clamped to
    [1, 2]) or, with one size measured, ``default_exponent`` (2 for forward and training, where attention is
    quadratic; 1 for decoding, whose cost after a prompt is mostly a prefill pass). ``history`` may start from a
    prior, such as training steps estimated from the forward pass.
    """

    def __init__(self, seconds: float, default_exponent: float, history: list[tuple[int, float]] | None = None):
        self.deadline = time.monotonic() + seconds
        self.default_exponent = default_exponent
        self.history = list(history or [])

    def predicted(self, size: int, calls: int) -> float | None:
        if not self.history:
            return None
        exponent = self.default_exponent
        if len(self.history) >= 2:
            (s0, t0), (s1, t1) = self.history[-2:]
            exponent = min(2.0, max(1.0, math.log(max(t1, 1e-9) / max(t0, 1e-9)) / math.log(s1 / s0)))
        last_size, last_seconds = self.history[-1]
        return last_seconds * (size / last_size) ** exponent * calls

    def check(self, size: int, calls: int) -> str | None:
        remaining = self.deadline - time.monotonic()
        estimate = self.predicted(size, calls)
        if remaining <= 0:
            return "timeout: stage budget spent"
        if estimate is not None and estimate > remaining:
            return f"timeout: predicted {estimate:.0f} s > {remaining:.0f} s left of the stage budget"
        return None


def _forward_record(model, ids: torch.Tensor, device: torch.device, repeats: int) -> dict:
    model.eval()

    def forward() -> None:
        with torch.no_grad(), _autocast(device):
            model(input_ids=ids, use_cache=False)

    forward()  # warm-up
    flops = count_flops(forward)
    seconds = min(time_call(forward, device) for _ in range(repeats))
    return {"seconds": seconds, "tokens_per_s": ids.numel() / seconds, "forward_flops": flops,
            "peak_memory_bytes": peak_memory_of(forward, device)}


def _forward_backward(model, ids: torch.Tensor, device: torch.device) -> None:
    model.zero_grad(set_to_none=True)
    with _autocast(device):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()


def _train_step(model, optimizer, ids: torch.Tensor, device: torch.device) -> None:
    _forward_backward(model, ids, device)
    optimizer.step()


def _train_record(model, optimizer, ids: torch.Tensor, device: torch.device, repeats: int, forward_flops: int | None,
                  peak_flops: float) -> dict:
    model.train()
    step = partial(_train_step, model, optimizer, ids, device)
    step()  # warm-up (also creates the optimizer state, which then counts as held memory)
    seconds = min(time_call(step, device) for _ in range(repeats))
    record = {"seconds": seconds, "tokens_per_s": ids.numel() / seconds,
              "peak_memory_bytes": peak_memory_of(step, device)}
    if forward_flops is not None:
        record["model_flops"] = 3 * forward_flops
        record["mfu"] = 3 * forward_flops / seconds / peak_flops
    return record


def _decode_record(model, prompt: torch.Tensor, new_tokens: int, device: torch.device, repeats: int,
                   cache_implementation: str | None = None) -> dict:
    model.eval()
    clock = TokenClock(device)
    starts: list[float] = []

    def generate() -> None:
        clock.stamps.clear()
        synchronize(device)
        starts.append(time.perf_counter())
        with torch.no_grad(), _autocast(device):
            model.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                do_sample=False, use_cache=True, pad_token_id=0, stopping_criteria=StoppingCriteriaList([clock]),
                cache_implementation=cache_implementation,
            )

    prefills, gaps = [], []
    memory = None
    for repeat in range(repeats):
        if repeat == 0:
            memory = peak_memory_of(generate, device)
        else:
            generate()
        prefills.append(clock.stamps[0] - starts[-1])
        gaps.extend(b - a for a, b in zip(clock.stamps, clock.stamps[1:]))
    ms_per_token = 1e3 * statistics.median(gaps)
    return {"prefill_seconds": statistics.median(prefills), "ms_per_token": ms_per_token,
            "decode_tokens_per_s": 1e3 / ms_per_token, "peak_memory_bytes": memory}


class StageTimeout(Exception):
    """Raised by the interval timer when a measurement runs past its stage's budget."""


def _raise_stage_timeout(signum, frame) -> None:
    raise StageTimeout


def _set_threads(task: dict) -> None:
    if task["threads"] is not None:
        torch.set_num_threads(task["threads"])


def model_worker(task: dict, results: multiprocessing.Queue) -> None:
    """Measures one model through the stages, sending each record as soon as it exists."""
    _set_threads(task)
    device = torch.device(task["device"])
    torch.manual_seed(0)
    shape = ModelShape(**task["shape"])
    model = build_model(task["model"], shape).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    forward_flops: dict[int, int] = {}
    forward_seconds: list[tuple[int, float]] = []
    # A measurement that overruns its stage is interrupted (between Python bytecodes, e.g. in Mamba's sequential scan)
    # rather than left to eat the budget of the stages after it.
    previous_handler = signal.signal(signal.SIGALRM, _raise_stage_timeout)
    started = time.monotonic()
    for index, stage in enumerate(task["stages"]):
        remaining = task["budget_s"] - (time.monotonic() - started)
        # A training step costs about three forward passes (backward ~ 2x forward).
        prior = [(size, 3 * seconds) for size, seconds in forward_seconds[-1:]] if stage == "train" else None
        budget = StageBudget(remaining / (len(task["stages"]) - index), 1.0 if stage in DECODE_STAGES else 2.0, prior)
        sizes = task["prompt_lens"] if stage in DECODE_STAGES else task["seq_lens"]
        calls = task["repeats"] + 2
        blocked = None  # once a size runs out of memory or time, the larger ones are not tried
        warm = stage not in DECODE_STAGES  # forward and train warm up inside their records
        cache_implementation = "static" if stage == "decode_static" else None
        for size in sizes:
            record = {"stage": stage, "length": size}
            if stage == "decode_static" and task["model"] not in STATIC_CACHE_MODELS:
                results.put({**record, "status": "unsupported", "note": "unsupported: no static KV cache"})
                continue
            status = blocked or budget.check(size, calls)
            if status is not None:
                results.put({**record, "status": status.split(":")[0], "note": status})
                continue
            shape_of_batch = (1 if stage in DECODE_STAGES else task["batch_size"], size)
            ids = torch.randint(0, shape.vocab_size, shape_of_batch, generator=generator).to(device)
            begin = time.monotonic()
            try:
                signal.setitimer(signal.ITIMER_REAL, max(budget.deadline - begin, 0.01))
                try:
                    if stage == "forward":
                        measured = _forward_record(model, ids, device, task["repeats"])
                        forward_flops[size] = measured["forward_flops"]
                        forward_seconds.append((size, measured["seconds"]))
                    elif stage == "train":
                        measured = _train_record(model, optimizer, ids, device, task["repeats"],
                                                 forward_flops.get(size), task["peak_flops"])
                    else:
                        if not warm:  # a short generate() first: kernel selection and lazy buffers aren't decode cost
                            _decode_record(model, ids[:, : min(16, size)], 2, device, 1, cache_implementation)
                            warm = True
                        measured = _decode_record(model, ids, task["new_tokens"], device, task["repeats"],
                                                  cache_implementation)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except StageTimeout:
                model.zero_grad(set_to_none=True)
                blocked = f"timeout: stopped after {time.monotonic() - begin:.0f} s at length {size}, the stage budget"
                results.put({**record, "status": "timeout", "note": blocked})
                continue
            except Exception as error:  # every failure is recorded and the run goes on
                model.zero_grad(set_to_none=True)
                if not _is_out_of_memory(error):
                    results.put({**record, "status": "error", "note": f"{type(error).__name__}: {error}"[:500]})
                    continue
                blocked = f"oom: out of memory at length {size}"
                results.put({**record, "status": "oom", "note": str(error)[:300]})
                continue
            budget.history = [*budget.history, (size, (time.monotonic() - begin) / calls)][-2:]
            results.put({**record, "status": "ok", **measured})
    signal.signal(signal.SIGALRM, previous_handler)
    results.put({"stage": "done"})


def _start_worker(target: Callable[[dict, multiprocessing.Queue], None], task: dict):
    """Starts ``target(task, results)`` in a fresh (spawned) process; returns the process and its results queue."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    worker = context.Process(target=target, args=(task, results), daemon=True)
    worker.start()
    return worker, results


def _worker_messages(worker, results, deadline: float) -> Iterator[dict]:
    """The worker's messages as they arrive, until the deadline passes or the worker has died with none left."""
    while time.monotonic() < deadline:
        try:
            message = results.get(timeout=1.0)
        except queue.Empty:
            if not worker.is_alive():
                return
            continue
        yield message


def run_model(task: dict, log: Callable[[str], None]) -> list[dict]:
    """Runs ``model_worker`` in a fresh process; sizes it never reported are marked timeout or crashed."""
    worker, results = _start_worker(model_worker, task)
    # The worker predicts and skips what would overrun; the hard limit only catches a single call that runs away.
    hard_deadline = time.monotonic() + 1.5 * task["budget_s"] + 60
    records, finished = [], False
    for message in _worker_messages(worker, results, hard_deadline):
        if message["stage"] == "done":
            finished = True
            break
        records.append(message)
        log(f"  {task['model']} {message['stage']} {message['length']}: {_short(message)}")
    if worker.is_alive() and not finished:
        worker.terminate()
        missing_status = ("timeout", f"timeout: killed after the hard limit of {1.5 * task['budget_s'] + 60:.0f} s")
    else:
        missing_status = ("crashed", f"crashed: worker exit code {worker.exitcode} (e.g. killed by the OOM killer)")
    worker.join(timeout=30)
    seen = {(record["stage"], record["length"]) for record in records}
    for stage in task["stages"]:
        for size in task["prompt_lens"] if stage in DECODE_STAGES else task["seq_lens"]:
            if (stage, size) not in seen and not finished:
                records.append({"stage": stage, "length": size, "status": missing_status[0], "note": missing_status[1]})
    return records


def _short(record: dict) -> str:
    if record["status"] != "ok":
        return record["note"]
    if record["stage"] in DECODE_STAGES:
        return f"{record['ms_per_token']:.2f} ms/token, prefill {record['prefill_seconds']:.3f} s"
    return f"{record['tokens_per_s']:.0f} tokens/s, peak {record['peak_memory_bytes'] / 2**20:.1f} MiB"


# ----------------------------------------------------------------------------------------------------------------------
# Energy attention overhead, in its own process
# ----------------------------------------------------------------------------------------------------------------------
def _paired(first: list[float], second: list[float]) -> dict:
    """Ratio first / second of best times (load from other processes only ever adds time, so the best of several
    repetitions is the least disturbed), with the median and range of the per-repetition ratios."""
    ratios = [a / b for a, b in zip(first, second)]
    return {"ratio": min(first) / min(second), "paired_median": statistics.median(ratios),
            "paired_min": min(ratios), "paired_max": max(ratios), "repeats": len(ratios)}


def _attention_op(qkv: tuple[torch.Tensor, ...], c: float, penalty: torch.Tensor | None, device: torch.device) -> None:
    """Forward and backward of the attention op, the augmentation of queries, keys and values included."""
    query, key, value = qkv
    width = cache_width(query.shape[-1], penalty is not None)
    with _autocast(device):
        out = energy_attention(
            augment_queries(query, c, penalty, width), augment_keys(key, width), pad_values(value, width)
        )
    torch.autograd.grad(out.sum(), qkv)


def energy_worker(task: dict, results: multiprocessing.Queue) -> None:
    _set_threads(task)
    device = torch.device(task["device"])
    shape = ModelShape(**task["shape"])
    models = {}
    for key, name, overrides in (("energy", ENERGY_MODEL, {}), ("plain", ENERGY_MODEL, {"energy_lambda": 0.0}),
                                 ("llama", "llama", {})):
        torch.manual_seed(0)
        models[key] = build_model(name, shape, **overrides).to(device).train()
    optimizers = {key: torch.optim.AdamW(models[key].parameters(), lr=1e-4) for key in ("energy", "llama")}
    heads, head_dim = shape.num_heads, shape.hidden_size // shape.num_heads
    c = 1.0 / math.sqrt(head_dim) - 0.1 * 0.5  # the model's default coefficients: lambda 0.1, beta 1, gamma 0.5
    penalty = torch.full((heads,), 0.1, device=device)
    generator = torch.Generator().manual_seed(0)
    for size in task["energy_seq_lens"]:
        ids = torch.randint(0, shape.vocab_size, (task["batch_size"], size), generator=generator).to(device)
        q, k, v = (torch.randn(task["batch_size"], heads, size, head_dim, generator=generator).to(device)
                   .requires_grad_() for _ in range(3))

        works = {
            "model_energy": partial(_forward_backward, models["energy"], ids, device),
            "model_plain": partial(_forward_backward, models["plain"], ids, device),
            "op_energy": partial(_attention_op, (q, k, v), c, penalty, device),
            "op_plain": partial(_attention_op, (q, k, v), c, None, device),
            "train_hamiltonian": partial(_train_step, models["energy"], optimizers["energy"], ids, device),
            "train_llama": partial(_train_step, models["llama"], optimizers["llama"], ids, device),
        }
        times: dict[str, list[float]] = {key: [] for key in works}
        try:
            for work in works.values():
                work()  # warm-up
            for _ in range(task["repeats"]):
                for key, work in works.items():  # interleaved: drifts in machine load hit every entry alike
                    times[key].append(time_call(work, device))
        except Exception as error:  # recorded; the next length still runs
            status = "oom" if _is_out_of_memory(error) else "error"
            results.put({"length": size, "status": status, "note": f"{type(error).__name__}: {error}"[:500]})
            continue
        tokens = ids.numel()
        results.put({
            "length": size, "status": "ok",
            "model_forward_backward": {**_paired(times["model_energy"], times["model_plain"]),
                                       "energy_seconds": min(times["model_energy"]),
                                       "lambda0_seconds": min(times["model_plain"])},
            "attention_op_forward_backward": {**_paired(times["op_energy"], times["op_plain"]),
                                              "energy_seconds": min(times["op_energy"]),
                                              "plain_seconds": min(times["op_plain"])},
            "train_step": {"hamiltonian_tokens_per_s": tokens / min(times["train_hamiltonian"]),
                           "llama_tokens_per_s": tokens / min(times["train_llama"]),
                           "tokens_per_s_vs_llama": _paired(times["train_llama"], times["train_hamiltonian"])},
        })
    results.put({"length": None, "status": "done"})


def run_energy(task: dict, log: Callable[[str], None]) -> list[dict]:
    worker, results = _start_worker(energy_worker, task)
    records = []
    for message in _worker_messages(worker, results, time.monotonic() + task["budget_s"]):
        if message["status"] == "done":
            break
        records.append(message)
        if message["status"] == "ok":
            log(f"  energy T={message['length']}: model fwd+bwd ratio "
                f"{message['model_forward_backward']['ratio']:.3f}, op ratio "
                f"{message['attention_op_forward_backward']['ratio']:.3f}")
        else:
            log(f"  energy T={message['length']}: {message['note']}")
    if worker.is_alive():
        worker.terminate()
    worker.join(timeout=30)
    done = {record["length"] for record in records}
    records += [{"length": size, "status": "timeout", "note": f"timeout: energy budget of {task['budget_s']:.0f} s"}
                for size in task["energy_seq_lens"] if size not in done]
    return records


# ----------------------------------------------------------------------------------------------------------------------
# Ratios, summaries, report
# ----------------------------------------------------------------------------------------------------------------------
RATIO_METRICS = {  # metric -> name of its ratio to Llama's
    "tokens_per_s": "tokens_per_s_vs_llama",
    "ms_per_token": "ms_per_token_vs_llama",
    "peak_memory_bytes": "peak_memory_vs_llama",
    "prefill_seconds": "prefill_vs_llama",
}


def add_llama_ratios(sweep: dict[str, list[dict]]) -> None:
    """Adds ``<metric>_vs_llama`` (this model's figure / Llama's, same stage and length) to every ok record."""
    llama = {(r["stage"], r["length"]): r for r in sweep.get("llama", []) if r["status"] == "ok"}
    for records in sweep.values():
        for record in records:
            reference = llama.get((record["stage"], record["length"]))
            if record["status"] != "ok" or reference is None:
                continue
            for metric, ratio_name in RATIO_METRICS.items():
                if record.get(metric) is not None and reference.get(metric):
                    record[ratio_name] = record[metric] / reference[metric]


def _find(sweep: dict, model: str, stage: str, length: int) -> dict | None:
    return next((r for r in sweep.get(model, []) if r["stage"] == stage and r["length"] == length
                 and r["status"] == "ok"), None)


def h3_vs_llama_summary(sweep: dict) -> dict:
    """H3 against Llama at the comparison's training and prompt lengths, from whatever the sweep measured."""
    summary: dict[str, dict] = {}
    for model in ("h3", "h3:pure"):
        if model not in sweep:
            continue
        entry: dict[str, object] = {}
        for length in H3_VS_LLAMA_SEQ_LENS:
            h3, llama = _find(sweep, model, "train", length), _find(sweep, "llama", "train", length)
            mamba = _find(sweep, "mamba", "train", length)
            entry[f"train_T{length}"] = None if h3 is None else {
                "tokens_per_s": h3["tokens_per_s"],
                "vs_llama": h3["tokens_per_s"] / llama["tokens_per_s"] if llama else None,
                "vs_mamba": h3["tokens_per_s"] / mamba["tokens_per_s"] if mamba else None,
            }
        for stage in DECODE_STAGES:  # each against Llama with the same kind of cache
            prefix = "" if stage == "decode" else "static_"
            short, long = (_find(sweep, model, stage, length) for length in H3_VS_LLAMA_PROMPT_LENS)
            llama_long = _find(sweep, "llama", stage, H3_VS_LLAMA_PROMPT_LENS[1])
            if short and long:
                entry[f"{prefix}decode_ms_per_token"] = {str(length): r["ms_per_token"] for length, r in
                                                         zip(H3_VS_LLAMA_PROMPT_LENS, (short, long))}
                entry[f"{prefix}decode_long_over_short"] = long["ms_per_token"] / short["ms_per_token"]
                if llama_long:
                    entry[f"{prefix}llama_over_h3_ms_per_token_at_long_prompt"] = (
                        llama_long["ms_per_token"] / long["ms_per_token"])
        forward = [r for r in sweep[model] if r["stage"] == "forward" and r["status"] == "ok"]
        entry["forward_peak_memory_bytes_per_token"] = {str(r["length"]): r["peak_memory_bytes"] / r["length"]
                                                        for r in forward}
        summary[model] = entry
    return summary


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _cell(record: dict | None, metric: str, fmt: Callable[[float], str]) -> str:
    if record is None:
        return "-"
    if record["status"] != "ok":
        return record["status"]
    text = fmt(record[metric]) if record.get(metric) is not None else "-"
    ratio = record.get(RATIO_METRICS.get(metric, ""))
    return text if ratio is None else f"{text} ({ratio:.2f}x)"


def _table(sweep: dict, stage: str, lengths: list[int], metric: str, fmt: Callable[[float], str], title: str) -> str:
    lines = [f"**{title}**", "", "| model | " + " | ".join(f"T={n}" for n in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for model, records in sweep.items():
        by_length = {r["length"]: r for r in records if r["stage"] == stage}
        lines.append(f"| {model} | " + " | ".join(_cell(by_length.get(n), metric, fmt) for n in lengths) + " |")
    return "\n".join(lines) + "\n"


def _ratio_cell(paired: dict) -> str:
    return (f"{paired['ratio']:.3f} ({paired['paired_median']:.3f}; {paired['paired_min']:.3f}-"
            f"{paired['paired_max']:.3f})")


def markdown_report(results: dict) -> str:
    machine = results["machine"]
    parts = [
        "## Speed and memory",
        "",
        f"Hardware: {machine.get('gpu') or machine.get('cpu')} ({machine['cpu_count']} CPUs, "
        f"{machine['torch_threads']} torch threads); torch {machine['torch']}, transformers "
        f"{machine['transformers']}, Python {machine['python']}. Command: `{results['command']}`.",
        f"Measured matmul peak: {results['matmul_peak_flops'] / 1e9:.1f} GFLOP/s ({results['compute_dtype']}).",
        f"Memory: {results['memory_method']}",
        "",
        "| model | class | parameters | notes |",
        "|---|---|---|---|",
    ]
    for name, info in results["models"].items():
        notes = ", ".join(f"{k}={v}" for k, v in info.items() if k not in ("parameters", "class"))
        parts.append(f"| {name} | {info['class']} | {info['parameters']:,} | {notes} |")
    parts.append("")
    sweep = results.get("sweep")
    if sweep:
        seq_lens, prompt_lens = results["settings"]["seq_lens"], results["settings"]["prompt_lens"]
        parts += [
            "Ratios in brackets are to Llama at the same length.",
            "",
            _table(sweep, "train", seq_lens, "tokens_per_s", lambda v: f"{v:.0f}", "Training step, tokens/s"),
            _table(sweep, "train", seq_lens, "mfu", lambda v: f"{100 * v:.1f}%", "Training step, MFU"),
            _table(sweep, "train", seq_lens, "peak_memory_bytes", _mib, "Training step, peak memory (MiB)"),
            _table(sweep, "forward", seq_lens, "peak_memory_bytes", _mib, "Forward pass, peak memory (MiB)"),
            _table(sweep, "decode", prompt_lens, "ms_per_token", lambda v: f"{v:.2f}",
                   "Greedy decoding, ms per token after a prompt of T tokens"),
            _table(sweep, "decode_static", prompt_lens, "ms_per_token", lambda v: f"{v:.2f}",
                   'Greedy decoding with generate(cache_implementation="static"), ms per token'),
            _table(sweep, "decode", prompt_lens, "prefill_seconds", lambda v: f"{v:.3f}", "Prefill, seconds"),
            _table(sweep, "decode", prompt_lens, "peak_memory_bytes", _mib, "generate(), peak memory (MiB)"),
        ]
    for model, entry in results.get("summary_h3_vs_llama", {}).items():
        train = ", ".join(
            f"T={length}: {figures['vs_llama']:.2f}x Llama" if figures and figures["vs_llama"] else f"T={length}: -"
            for length, figures in ((n, entry[f"train_T{n}"]) for n in H3_VS_LLAMA_SEQ_LENS)
        )
        decodes = []
        for prefix, label in (("", "dynamic cache"), ("static_", "static cache")):
            if f"{prefix}decode_long_over_short" not in entry:
                continue
            short, long = H3_VS_LLAMA_PROMPT_LENS
            text = (f"{label}: {entry[f'{prefix}decode_long_over_short']:.2f}x from a {short}- to a {long}-token "
                    "prompt")
            if f"{prefix}llama_over_h3_ms_per_token_at_long_prompt" in entry:
                text += (f", Llama / {model} per token at {H3_VS_LLAMA_PROMPT_LENS[1]}: "
                         f"{entry[f'{prefix}llama_over_h3_ms_per_token_at_long_prompt']:.2f}x")
            decodes.append(text)
        decode = "; ".join(decodes) or "-"
        per_token = entry["forward_peak_memory_bytes_per_token"]
        memory = ", ".join(f"T={n}: {v / 1024:.1f} KiB" for n, v in per_token.items())
        parts += [f"**{model} against Llama**: training tokens/s {train}. Decode ms/token {decode}. Forward peak "
                  f"memory per token: {memory or '-'}.", ""]
    energy = results.get("energy")
    if energy:
        parts += [
            f"**Energy attention overhead**: `{ENERGY_MODEL}` at lambda=0.1 against lambda=0, "
            f"forward+backward; best of {results['settings']['repeats']} interleaved repetitions each, in brackets "
            "the median and range of the per-repetition ratios. Training step (forward, backward, AdamW) tokens/s "
            "against the matched Llama, best of the same repetitions.",
            "",
            "| T | model fwd+bwd ratio | attention op fwd+bwd ratio | Hamiltonian train tokens/s | "
            "Llama train tokens/s | Hamiltonian / Llama |",
            "|---|---|---|---|---|---|",
        ]
        for record in energy:
            if record["status"] != "ok":
                parts.append(f"| {record['length']} | {record['note']} | | | | |")
                continue
            model, op, train = (record["model_forward_backward"], record["attention_op_forward_backward"],
                                record["train_step"])
            parts.append(
                f"| {record['length']} | {_ratio_cell(model)} | {_ratio_cell(op)} | "
                f"{train['hamiltonian_tokens_per_s']:.0f} | {train['llama_tokens_per_s']:.0f} | "
                f"{train['tokens_per_s_vs_llama']['ratio']:.2f}x |"
            )
        parts.append("")
    return "\n".join(parts)


def write_plots(results: dict, output_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = [
        ("train", "tokens_per_s", "training step tokens/s", "train_tokens_per_s.png"),
        ("train", "peak_memory_bytes", "training step peak memory (MiB)", "train_peak_memory.png"),
        ("forward", "peak_memory_bytes", "forward pass peak memory (MiB)", "forward_peak_memory.png"),
        ("decode", "ms_per_token", "ms per generated token", "decode_ms_per_token.png"),
        ("decode_static", "ms_per_token", "ms per generated token, static KV cache", "decode_static_ms_per_token.png"),
        ("decode", "peak_memory_bytes", "generate() peak memory (MiB)", "generation_peak_memory.png"),
    ]
    written = []
    for stage, metric, label, filename in plots:
        series = {}
        for model, records in results["sweep"].items():
            points = [(r["length"], r[metric]) for r in records
                      if r["stage"] == stage and r["status"] == "ok" and r.get(metric) is not None]
            if points:
                series[model] = points
        if not series:  # e.g. a stage that was not run
            continue
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for model, points in series.items():
            lengths, values = zip(*points)
            scale = 2**20 if metric == "peak_memory_bytes" else 1
            axes.plot(lengths, [v / scale for v in values], marker="o", label=model)
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xlabel("prompt length" if stage in DECODE_STAGES else "sequence length T")
        axes.set_ylabel(label)
        axes.set_title(f"{label} ({results['machine'].get('gpu') or results['machine'].get('cpu')})", fontsize=9)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(output_dir / filename, dpi=120)
        plt.close(figure)
        written.append(filename)
    return written


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and lengths, one repetition (< 3 min on CPU)")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/bench/speed"))
    parser.add_argument("--sections", type=choice_list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--stages", type=choice_list(STAGES), default=list(STAGES),
                        help="measurements of the sweep (train reports MFU only after forward)")
    parser.add_argument("--models", type=choice_list(MODEL_NAMES), default=list(SPEED_MODELS))
    parser.add_argument("--preset", choices=("tiny", "small", "base"), help="model sizes (quick: tiny; full: small)")
    lengths = int_list(positive_sorted=True)
    parser.add_argument("--seq_lens", type=lengths, help="training / forward lengths")
    parser.add_argument("--prompt_lens", type=lengths, help="prompt lengths before decoding")
    parser.add_argument("--energy_seq_lens", type=lengths, help="lengths of the energy-overhead section")
    parser.add_argument("--new_tokens", type=int, help="tokens generated after each prompt (at least 2)")
    parser.add_argument("--repeats", type=int, help="timed repetitions per measurement (median reported)")
    parser.add_argument("--budget_s", type=float, help="time budget per model (and for the energy section)")
    parser.add_argument("--batch_size", type=int, default=1, help="sequences per training / forward step")
    parser.add_argument("--matmul_size", type=int, default=2048, help="side of the square matmul of the peak")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (quick: 1; full: torch's default)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for model in args.models:
        check_model_name(model)
    args.stages = [stage for stage in STAGES if stage in args.stages]  # forward first: train needs its FLOPs
    if args.new_tokens < 2:
        parser.error(f"--new_tokens must be at least 2 (one gap between tokens), got {args.new_tokens}")
    if args.repeats < 1 or args.batch_size < 1:
        parser.error(f"--repeats and --batch_size must be positive, got {args.repeats} and {args.batch_size}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and not cpu_peak_memory_supported():
        raise SystemExit("CPU peak memory needs Linux /proc/self/clear_refs, which this system does not allow")
    args.output_dir.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    longest = max(args.seq_lens + args.energy_seq_lens + [p + args.new_tokens for p in args.prompt_lens])
    shape = ModelShape.from_preset(args.preset, max_length=longest)
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # the matmul peak is measured with the threads the models get
    compute_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak_flops(device, compute_dtype, args.matmul_size, repeats=5)
    log(f"matmul peak: {peak / 1e9:.1f} GFLOP/s ({compute_dtype})")
    recorded = ("preset", "seq_lens", "prompt_lens", "energy_seq_lens", "new_tokens", "repeats", "budget_s",
                "batch_size", "threads", "sections", "stages")
    settings = {key: getattr(args, key) for key in recorded}
    results: dict = {
        "command": " ".join(["python", "scripts/bench/speed.py", *(sys.argv[1:] if argv is None else argv)]),
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(device),
        "compute_dtype": str(compute_dtype).replace("torch.", ""),
        "matmul_peak_flops": peak,
        "memory_method": (
            "torch.cuda.max_memory_allocated minus the allocation before the call" if device.type == "cuda" else
            "peak resident set (VmHWM, reset via /proc/self/clear_refs after malloc_trim) minus the resident size "
            "before the call, in a fresh process per model; weights and optimizer state held before are excluded, "
            "gradients, activations, caches and allocator slack are included"
        ),
        "settings": settings,
        "shape": dataclasses.asdict(shape),
        "models": {name: describe(name, shape) for name in dict.fromkeys(
            (args.models if "sweep" in args.sections else []) + ([ENERGY_MODEL] if "energy" in args.sections else [])
            + ["llama"])},
    }
    task = {"device": args.device, "threads": args.threads, "shape": dataclasses.asdict(shape),
            "batch_size": args.batch_size, "repeats": args.repeats, "budget_s": args.budget_s}
    if "sweep" in args.sections:
        sweep = {}
        for model in args.models:
            log(f"{model} ({results['models'][model]['parameters']:,} parameters)")
            sweep[model] = run_model({**task, "model": model, "stages": args.stages, "seq_lens": args.seq_lens,
                                      "prompt_lens": args.prompt_lens, "new_tokens": args.new_tokens,
                                      "peak_flops": peak}, log)
        add_llama_ratios(sweep)
        results["sweep"] = sweep
        results["summary_h3_vs_llama"] = h3_vs_llama_summary(sweep)
    if "energy" in args.sections:
        log(f"energy overhead: {ENERGY_MODEL} lambda=0.1 vs lambda=0, and vs llama")
        results["energy"] = run_energy({**task, "energy_seq_lens": args.energy_seq_lens}, log)
    (args.output_dir / "speed.json").write_text(json.dumps(results, indent=2))
    (args.output_dir / "speed.md").write_text(markdown_report(results))
    if not args.quick and "sweep" in args.sections:
        results["plots"] = write_plots(results, args.output_dir)
        (args.output_dir / "speed.json").write_text(json.dumps(results, indent=2))
    log(f"wrote {args.output_dir / 'speed.json'} and speed.md")
    return results


if __name__ == "__main__":
    main()
