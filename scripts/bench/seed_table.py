"""The README's rows over seeds run one process each: per-seed, mean and best accuracy of synthetic-task and MQAR runs.

    python scripts/bench/seed_table.py \\
        docs/bench/safari_own/induction_head/seed* \\
        docs/bench/quality_paper/induction_head_safari_schedule/h3_pure_shift_b_safari_init/seed*

Each path is a run's output folder or its JSON: ``summary.json`` of safari_train.py (safari's own code) or
``quality.json`` of quality.py (every model and seed of its synthetic and MQAR sections; an MQAR model's seeds at
the learning rate it reports). Runs of the same task by the same code, model, sets and batch-order seeding
(``--order_seed_offset``), and for MQAR the same learning rate and epochs, make one row: the test accuracy after
the last epoch of each seed, their mean and sample standard deviation, the best epoch's accuracy of each seed and
the first epoch (counted from 1) at which each seed's accuracy reaches each of ``--thresholds``. One table per
task, printed as markdown. ``--rename OLD=NEW`` counts runs that quality.py recorded under model name OLD as NEW's
(for runs made before a model had its name).

Where a task has several rows, a second table sets each against the first: the mean of each seed's best epoch, the
seeds whose last epoch reaches ``--goal``, the difference of the last-epoch means with its standard error (Welch's:
each row's sample variance over its seeds), the two-sided p of Fisher's exact test on the seeds reaching the goal
and that of the exact rank-sum (Wilcoxon-Mann-Whitney) test on the first epoch reaching the first of
``--thresholds`` (a seed that never reaches it ranks after every one that does).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
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
    if not (record.get("synthetic") or record.get("mqar")):
        raise SystemExit(f"{file}: no synthetic-task or MQAR runs (quality.py's --sections synthetic, mqar) and no "
                         "safari summary")
    runs = [SeedRun(task, f"this project (`{renamed.get(model, model)}`, quality.py{_data_note(setting)})",
                    run["seed"], tuple(run["accuracy_by_epoch"]))
            for task, setting in record.get("synthetic", {}).items()
            for model, entry in setting["models"].items()
            for run in entry["per_seed"]]
    for setting in record.get("mqar", {}).values():
        task = f"MQAR ({setting['length']}, {setting['pairs']}), width {setting['width']}"
        epochs = f"{setting['recipe']['epochs']} of the paper's {setting['paper_recipe']['epochs']} epochs"
        runs += [SeedRun(task, f"this project (`{renamed.get(model, model)}`, quality.py, "
                               f"lr {entry['learning_rate']:g}, {epochs})", run["seed"],
                         tuple(run["accuracy_by_epoch"]))
                 for model, entry in setting["models"].items()
                 for run in entry["per_seed"]]
    return runs


def _data_note(setting: dict) -> str:
    """Where the sets of a quality.py run came from, when not from the default data seed, and its batch order's
    seed offset, when not 0."""
    offset = setting.get("recipe", {}).get("order_seed_offset", 0)
    order = f", batch order from seed + {offset}" if offset else ""
    if setting.get("data_seed", 0) is None:  # --synthetic_data_file
        return f", sets: {setting['data'].partition(': ')[2]}{order}"
    return (f", data seed {setting['data_seed']}" if setting.get("data_seed", 0) else "") + order


def _seed_list(seeds: list[int]) -> str:
    contiguous = len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1))
    return f"{seeds[0]}-{seeds[-1]}" if contiguous else ", ".join(map(str, seeds))


def fisher_exact_two_sided(table: tuple[tuple[int, int], tuple[int, int]]) -> float:
    """Fisher's exact test of a 2 x 2 table of counts: the probability, under the hypergeometric law of its margins,
    of every table no more probable than the one observed."""
    (a, b), (c, d) = table
    row, column, total = a + b, a + c, a + b + c + d

    def probability(k: int) -> float:  # of the table whose top-left count is k
        return math.comb(row, k) * math.comb(total - row, column - k) / math.comb(total, column)

    observed = probability(a)
    corners = range(max(0, column + row - total), min(row, column) + 1)  # the top-left counts the margins allow
    return min(1.0, sum(p for p in map(probability, corners) if p <= observed * (1 + 1e-7)))


def rank_sum_two_sided(first: list[float], second: list[float]) -> float:
    """The exact two-sided p of the rank-sum test: the share of all ways to split the pooled values into groups of
    these sizes whose rank sum lies at least as far from its mean as ``first``'s does (ties take their mean rank)."""
    pooled = sorted(first + second)
    doubled = {}  # twice each value's mean rank, an integer
    for start, value in enumerate(pooled):
        if value not in doubled:
            end = start + pooled.count(value)  # the tied block holds ranks start + 1 ... end
            doubled[value] = start + 1 + end
    ways = [{0: 1}]  # ways[k][s]: subsets of k of the values seen so far with doubled rank sum s
    for value in pooled:
        rank = doubled[value]
        ways.append({})
        for k in range(len(ways) - 1, 0, -1):
            for total, count in ways[k - 1].items():
                ways[k][total + rank] = ways[k].get(total + rank, 0) + count
    n, size = len(first), len(pooled)
    centre = n * sum(doubled[value] for value in pooled) / size
    observed = abs(sum(doubled[value] for value in first) - centre)
    extreme = sum(count for total, count in ways[n].items() if abs(total - centre) >= observed - 1e-9)
    return extreme / math.comb(size, n)


def _comparison(reference: list[SeedRun], ordered: list[SeedRun], goal: float,
                threshold: float) -> tuple[str, str, str, str]:
    """(difference of last-epoch means, its standard errors, Fisher's p, the rank-sum p of the first epochs reaching
    ``threshold``) of ``ordered`` against ``reference``."""
    first, other = [run.last for run in reference], [run.last for run in ordered]
    difference = statistics.fmean(other) - statistics.fmean(first)
    reached = [(sum(value >= goal for value in values), len(values)) for values in (first, other)]
    p = fisher_exact_two_sided(tuple((hits, n - hits) for hits, n in reached))
    epochs = [[run.first_epoch_reaching(threshold) or math.inf for run in runs] for runs in (reference, ordered)]
    onset = f"{rank_sum_two_sided(*epochs):.3f}"
    if min(len(first), len(other)) < 2:
        return f"{difference:+.3f}", "- (one seed)", f"{p:.2f}", onset
    error = math.sqrt(statistics.variance(first) / len(first) + statistics.variance(other) / len(other))
    ratio = f"{abs(difference) / error:.1f}" if error else "-"
    return f"{difference:+.3f}", f"{error:.3f} ({ratio} of them)", f"{p:.2f}", onset


def tables(runs: list[SeedRun], thresholds: tuple[float, ...], goal: float = 0.99) -> str:
    """One markdown table per task, one row per code, model and sets, its seeds in order; where a task has several
    rows, the comparison of each with the first."""
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
        if len(codes) > 1:
            lines += _comparison_table(codes, goal, thresholds[0])
    return "\n".join(lines)


def _comparison_table(codes: dict[str, dict[int, SeedRun]], goal: float, threshold: float) -> list[str]:
    ordered = {code: [by_seed[seed] for seed in sorted(by_seed)] for code, by_seed in codes.items()}
    reference = next(iter(ordered.values()))
    lines = [f"| run | mean, each seed's best epoch | seeds reaching {goal:g}, last epoch "
             "| difference of last-epoch means from the first row | its standard error "
             f"| Fisher's exact p, seeds reaching {goal:g} (two-sided) "
             f"| rank-sum p, first epoch reaching {threshold:g} (exact, two-sided) |", "|---|---|---|---|---|---|---|"]
    for index, (code, runs) in enumerate(ordered.items()):
        best = quality._figure({"accuracy": quality.summarize([run.best for run in runs])}, "accuracy", 3)
        reached = f"{sum(run.last >= goal for run in runs)} of {len(runs)}"
        against = ("(the first row)",) * 4 if index == 0 else _comparison(reference, runs, goal, threshold)
        lines.append(f"| {code} | {best} | {reached} | {' | '.join(against)} |")
    return [*lines, ""]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run output folders or their summary.json/quality.json")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.95],
                        help="accuracies whose first epoch is reported (default 0.5 0.95)")
    parser.add_argument("--goal", type=float, default=0.99,
                        help="the accuracy whose seeds the comparison of rows counts (default 0.99)")
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
    if not 0.0 < args.goal <= 1.0:
        parser.error(f"--goal: {args.goal} is not an accuracy in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    text = tables([run for path in args.runs for run in read_runs(path, args.renamed)], tuple(args.thresholds),
                  args.goal)
    print(text)
    return text


if __name__ == "__main__":
    main()
