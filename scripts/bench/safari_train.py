"""Trains with safari's own code on this machine: its train.py (Lightning 1.8, Hydra), configs, model and data.

    git clone https://github.com/HazyResearch/safari SAFARI
    python -m venv --system-site-packages .venv-safari
    .venv-safari/bin/pip install "pytorch-lightning==1.8.6" "lightning-utilities<0.10" "setuptools>=77.0.3,<81" \\
        hydra-core omegaconf rich einops opt_einsum && .venv-safari/bin/pip install --no-deps "timm==0.6.13"
    .venv-safari/bin/python scripts/bench/safari_train.py --safari_dir SAFARI --task associative_recall --seed 0 \\
        --output_dir docs/bench/safari_own/associative_recall/seed0

This runs safari's ``train.py`` on the experiment config of the task's H3 row of the H3 paper's table 2
(``synthetics/associative_recall/h3-vs10`` or ``synthetics/induction_head/h3``) as it stands, with the overrides a
CPU needs (``trainer.accelerator=cpu``, ``wandb=null``, no progress bar) and ``train.seed`` (the model's seed; the
data is safari's ``dataset.seed`` 0, as in quality.py). What differs from running it on a GPU, and why:

- Lightning logs to a CSV file (``metrics.csv`` in the output folder) in place of wandb.
- safari's task moves its torchmetrics to the device ``"cuda"`` by name: on a CPU they stay on the CPU.
- torchvision, torchtext and wandb, which safari's packages (and timm, whose cosine schedule the induction head
  uses) import but these runs never call, are stood in for (safari_checkout.py); torchvision's StochasticDepth,
  which safari's model builds with p = 0, is the identity. (torchvision's wheels on PyPI are built for CUDA
  torch and do not load beside the CPU build.)

``--write_data FILE`` writes safari's training and test sets of the task instead (its data module as the config
builds it, ``dataset.seed`` 0 unless overridden), for ``quality.py --synthetic_data_file FILE``.

The environment: lightning-utilities 0.9 imports ``pkg_resources``, which setuptools 81 dropped, and torch 2.13
needs setuptools 77.0.3 or later; within those bounds the virtual environment keeps the torch it sees (this
project's). An upper bound alone (the ``setuptools<70`` this docstring gave before) makes pip replace torch with
the newest release that accepts that setuptools, a CUDA build of torch 2.12.1.

Then ``summary.json`` and ``summary.md`` in the output folder give the validation accuracy (safari's
``val/accuracy_ignore_index``: the answers of its 500 test sequences) after every epoch, the last and the best,
and the versions of torch and Lightning that trained. ``--summarize_only`` writes them from an existing
``metrics.csv`` (the versions then unknown).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import runpy
import sys
import tempfile
import time
from pathlib import Path

import torch
from safari_checkout import check_checkout, checkout_commit, stand_in

EXPERIMENTS = {
    "associative_recall": "synthetics/associative_recall/h3-vs10",
    "induction_head": "synthetics/induction_head/h3",
}
CPU_OVERRIDES = ("trainer.accelerator=cpu", "trainer.devices=1", "wandb=null", "+trainer.enable_progress_bar=false")
STOOD_IN = ("torchvision", "torchtext", "wandb")
METRIC = "val/accuracy_ignore_index"


def train(safari_dir: Path, overrides: list[str], output_dir: Path, callbacks: tuple = ()) -> None:
    """safari's train.py as its own ``__main__``, logging to ``output_dir/metrics.csv``; ``callbacks`` (Lightning's)
    join the trainer's own."""
    import hydra.utils  # noqa: PLC0415 (safari's dependencies: installed for this script only)
    import pytorch_lightning as pl  # noqa: PLC0415
    import torchmetrics  # noqa: PLC0415

    stand_in(STOOD_IN)  # after torchmetrics, which probes torchvision at import

    metric_to = torchmetrics.Metric.to

    def to_cpu_for_cuda(self, *args, **kwargs):
        return metric_to(self, *("cpu" if arg == "cuda" else arg for arg in args), **kwargs)

    instantiate = hydra.utils.instantiate

    def instantiate_with_csv_logger(config, *args, **kwargs):
        if "logger" in kwargs and kwargs["logger"] is None:  # the trainer, which wandb=null leaves without a logger
            kwargs["logger"] = pl.loggers.CSVLogger(str(output_dir), name="", version="")
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), *callbacks]
        return instantiate(config, *args, **kwargs)

    torchmetrics.Metric.to = to_cpu_for_cuda
    hydra.utils.instantiate = instantiate_with_csv_logger
    sys.argv = [str(safari_dir / "train.py"), *overrides, f"hydra.run.dir={output_dir / 'hydra'}"]
    os.chdir(safari_dir)
    runpy.run_path(str(safari_dir / "train.py"), run_name="__main__")


def record_data(safari_dir: Path, overrides: list[str]) -> dict[str, tuple]:
    """safari's training and test sets, (inputs, targets) each, from the data module of the run ``overrides`` pick
    (read as training starts; the run then stops after its first step)."""
    import pytorch_lightning as pl  # noqa: PLC0415 (safari's dependency)

    sets = {}

    class Reader(pl.Callback):
        def on_train_start(self, trainer, module):
            sets.update({split: tuple(tensor.clone() for tensor in module.dataset.dataset[split].tensors)
                         for split in ("train", "test")})

    with tempfile.TemporaryDirectory() as output_dir:
        train(safari_dir, [*overrides, "+trainer.max_steps=1"], Path(output_dir), callbacks=(Reader(),))
    return sets


def epoch_accuracies(metrics_csv: Path) -> list[float]:
    """The validation accuracy after each epoch, in order."""
    by_epoch: dict[int, float] = {}
    with metrics_csv.open() as file:
        for row in csv.DictReader(file):
            if row.get(METRIC) and row.get("epoch"):
                by_epoch[int(float(row["epoch"]))] = float(row[METRIC])
    if not by_epoch:
        raise SystemExit(f"{metrics_csv} has no {METRIC}")
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def training_versions() -> dict[str, str]:
    """The versions of what trains: torch and Lightning, as this process imports them."""
    import pytorch_lightning as pl  # noqa: PLC0415 (safari's dependency)

    return {"torch": torch.__version__, "pytorch_lightning": pl.__version__}


def summarize(output_dir: Path, task: str, seed: int, command: str, commit: str, seconds: float | None,
              versions: dict[str, str] | None = None) -> dict:
    accuracies = epoch_accuracies(output_dir / "metrics.csv")
    best = max(range(len(accuracies)), key=accuracies.__getitem__)
    summary = {
        "task": task, "experiment": EXPERIMENTS[task], "seed": seed, "safari_commit": commit, "command": command,
        "epochs": len(accuracies), "last": accuracies[-1], "best": accuracies[best], "best_epoch": best + 1,
        "accuracy_per_epoch": accuracies, "seconds": seconds, "versions": versions,
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    every = max(1, len(accuracies) // 10)
    curve = ", ".join(f"{epoch + 1}: {accuracies[epoch]:.3f}" for epoch in range(every - 1, len(accuracies), every))
    (output_dir / "summary.md").write_text(
        f"# safari's own training: {task}, seed {seed}\n\n"
        f"HazyResearch/safari at {commit}, experiment `{EXPERIMENTS[task]}`. Command: `{command}`. "
        f"{_versions_line(versions)}\n\n"
        f"Validation accuracy ({METRIC}) after the last of {len(accuracies)} epochs: **{accuracies[-1]:.3f}**; "
        f"best {accuracies[best]:.3f} (epoch {best + 1}).\n\nAfter epochs {curve}.\n")
    return summary


def _versions_line(versions: dict[str, str] | None) -> str:
    if versions is None:
        return "Versions not recorded (summarised from the log)."
    return "Trained with " + ", ".join(f"{name} {version}" for name, version in versions.items()) + "."


def run_argument_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first paragraph, with the arguments that pick a run of safari's train.py:
    the checkout, the task and the seed."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--safari_dir", type=Path, required=True, help="a checkout of HazyResearch/safari")
    parser.add_argument("--task", choices=tuple(EXPERIMENTS), required=True)
    parser.add_argument("--seed", type=int, default=0, help="safari's train.seed (default 0)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = run_argument_parser(__doc__)
    parser.add_argument("--output_dir", type=Path, help="where the run writes its log and summary (required to train)")
    parser.add_argument("--write_data", type=Path, metavar="FILE",
                        help="write safari's training and test sets of the task to FILE instead of training")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a further Hydra override (repeatable), e.g. trainer.max_epochs=2 for a quick check")
    parser.add_argument("--summarize_only", action="store_true", help="summarise an existing metrics.csv")
    args = parser.parse_args(argv)
    if args.output_dir is None and args.write_data is None:
        parser.error("--output_dir is required (or --write_data FILE, to write safari's data only)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    command = " ".join(["python scripts/bench/safari_train.py", *(argv if argv is not None else sys.argv[1:])])
    safari_dir = args.safari_dir.resolve()
    overrides = [f"experiment={EXPERIMENTS[args.task]}", *CPU_OVERRIDES, f"train.seed={args.seed}", *args.override]
    if args.write_data is not None:
        path = args.write_data.resolve()  # before train.py moves into the checkout
        check_checkout(safari_dir)
        sets = record_data(safari_dir, overrides)
        source = (f"HazyResearch/safari {checkout_commit(safari_dir)[:7]}, {EXPERIMENTS[args.task]}"
                  f"{', ' + ' '.join(args.override) if args.override else ''}")
        torch.save({"task": args.task, "source": source, **sets}, path)
        print(f"wrote {path}: {source}; {len(sets['train'][0])} training and {len(sets['test'][0])} test sequences")
        return {"task": args.task, "source": source, "data": str(path)}
    output_dir = args.output_dir.resolve()
    seconds, versions = None, None
    if not args.summarize_only:
        check_checkout(safari_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        train(safari_dir, overrides, output_dir)
        seconds, versions = time.perf_counter() - start, training_versions()
    summary = summarize(output_dir, args.task, args.seed, command, checkout_commit(safari_dir), seconds, versions)
    print(f"{args.task} seed {args.seed}: last {summary['last']:.3f}, best {summary['best']:.3f} "
          f"(epoch {summary['best_epoch']} of {summary['epochs']})")
    return summary


if __name__ == "__main__":
    main()
