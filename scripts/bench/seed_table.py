"""The README's rows over seeds run one process each: per-seed, mean and best accuracy of synthetic-task runs.

    python scripts/bench/seed_table.py \\
        docs/bench/safari_own/induction_head/seed* \\
        docs/bench/quality_paper/induction_head_safari_schedule/h3_pure_shift_b_safari_init/seed*

Each path is a run's output folder or its JSON: ``summary.json`` of safari_train.py (safari's own code) or
``quality.json`` of quality.py (every model and seed of its synthetic section). Runs of the same task by the same
code, model and sets make one row: the test accuracy after the last epoch of each seed, their mean and sample standard
deviation, the best epoch's accuracy of each seed and the first epoch (counted from 1) at which each seed's accuracy
reaches each of ``--thresholds``. One table per task, printed as markdown. ``--rename OLD=NEW`` counts runs that
quality.py recorded under model name OLD as NEW's (for runs made before a model had its name).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import quality  # its mean ± spread (n) figures, the reports' own

RUN_FILES = ("summary.json", "quality.json")


@dataclass(frozen=True)
class SeedRun:
    task: str
    code: str  # what trained it: the row's name
    seed: int
    accuracy_by_epoch: tuple[float, ...]

    @property
    def last(self) -> float:
        return self.accuracy_by_epoch[-1]

    @property
    def best(self) -> float:
        return max(self.accuracy_by_epoch)

    def first_epoch_reaching(self, threshold: float) -> int | None:
        return next((epoch for epoch, accuracy in enumerate(self.accuracy_by_epoch, 1) if accuracy >= threshold),
                    None)


def _run_file(path: Path) -> Path:
    if path.is_file():
        return path
    found = [path / name for name in RUN_FILES if (path / name).is_file()]
    if len(found) != 1:
        raise SystemExit(f"{path}: expected a run's output folder holding one of {', '.join(RUN_FILES)}, "
                         f"found {'both' if found else 'neither'}")
    return found[0]


def read_runs(path: Path, renamed: dict[str, str] | None = None) -> list[SeedRun]:
    """Every seed's run recorded at ``path``; quality.py's models named as ``renamed`` maps them."""
    renamed = renamed or {}
    file = _run_file(path)
    record = json.loads(file.read_text())
    if "accuracy_per_epoch" in record:  # safari_train.py's summary
        code = f"safari's own code (`train.py`, `{record['experiment']}`)"
        return [SeedRun(record["task"], code, record["seed"], tuple(record["accuracy_per_epoch"]))]
    if not record.get("synthetic"):
        raise SystemExit(f"{file}: no synthetic-task runs (quality.py's --sections synthetic) and no safari summary")
    return [SeedRun(task, f"this project (`{renamed.get(model, model)}`, quality.py{_data_note(setting)})",
                    run["seed"], tuple(run["accuracy_by_epoch"]))
            for task, setting in record["synthetic"].items()
            for model, entry in setting["models"].items()
            for run in entry["per_seed"]]


def _data_note(setting: dict) -> str:
    """Where the sets of a quality.py run came from, when not from the default data seed."""
    if setting.get("data_seed", 0) is None:  # --synthetic_data_file
        return f", sets: {setting['data'].partition(': ')[2]}"
    return f", data seed {setting['data_seed']}" if setting.get("data_seed", 0) else ""


def _seed_list(seeds: list[int]) -> str:
    contiguous = len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1))
    return f"{seeds[0]}-{seeds[-1]}" if contiguous else ", ".join(map(str, seeds))


def tables(runs: list[SeedRun], thresholds: tuple[float, ...]) -> str:
    """One markdown table per task, one row per code, model and sets, its seeds in order."""
    rows: dict[str, dict[str, dict[int, SeedRun]]] = {}
    for run in runs:
        by_seed = rows.setdefault(run.task, {}).setdefault(run.code, {})
        if run.seed in by_seed:
            raise SystemExit(f"{run.task}, {run.code}: seed {run.seed} given twice")
        by_seed[run.seed] = run
    reaching = " / ".join(f"{threshold:g}" for threshold in thresholds)
    lines = []
    for task, codes in rows.items():
        lines += [f"**{task}**", "",
                  f"| run | seeds | test accuracy, last epoch, per seed | mean | best epoch, per seed "
                  f"| first epoch reaching {reaching}, per seed |", "|---|---|---|---|---|---|"]
        for code, by_seed in codes.items():
            seeds = sorted(by_seed)
            ordered = [by_seed[seed] for seed in seeds]
            firsts = ", ".join(" / ".join(str(run.first_epoch_reaching(threshold) or "never")
                                          for threshold in thresholds) for run in ordered)
            mean = quality._figure({"accuracy": quality.summarize([run.last for run in ordered])}, "accuracy", 3)
            lines.append(f"| {code} | {_seed_list(seeds)} | {' / '.join(f'{run.last:.3f}' for run in ordered)} "
                         f"| {mean} "
                         f"| {' / '.join(f'{run.best:.3f}' for run in ordered)} | {firsts} |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run output folders or their summary.json/quality.json")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.95],
                        help="accuracies whose first epoch is reported (default 0.5 0.95)")
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                        help="count quality.py's runs of model OLD as NEW's (repeatable)")
    args = parser.parse_args(argv)
    args.renamed = {}
    for pair in args.rename:
        old, equals, new = pair.partition("=")
        if not (old and equals and new):
            parser.error(f"--rename: {pair!r} is not OLD=NEW (two model names)")
        args.renamed[old] = new
    for threshold in args.thresholds:
        if not 0.0 < threshold <= 1.0:
            parser.error(f"--thresholds: {threshold} is not an accuracy in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    text = tables([run for path in args.runs for run in read_runs(path, args.renamed)], tuple(args.thresholds))
    print(text)
    return text


if __name__ == "__main__":
    main()
