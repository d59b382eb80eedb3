"""Is the benchmark's pure H3 the H3 paper's model? Runs safari's own model code beside ours on the same weights.

    git clone https://github.com/HazyResearch/safari /path/to/safari && pip install einops opt_einsum
    python scripts/bench/safari_equivalence.py --safari_dir /path/to/safari --output docs/bench/safari_equivalence.md

For the H3 paper's two synthetic tasks (safari's ``configs/experiment/synthetics/{associative_recall,induction_head}
/h3*.yaml``: ``lm_simple`` with the ``h3`` layer, width 32, 2 layers, MLP width 128, vocabulary 10 or 20) this builds
safari's ``SimpleLMHeadModel`` from the checkout given and quality.py's ``h3:pure:shift_b:safari_init``, then

1. draws both ``--draws`` times and compares every parameter's initial values (``compare_values``): the entries the
   initialisation fixes (the same in every draw) must be the same entries and values, to float rounding; the drawn
   ones, pooled over the draws, must agree in mean and standard deviation within 5 standard errors and in
   distribution (a two-sample Kolmogorov-Smirnov test at level 1e-4);
2. copies safari's weights into ours (the name map below) and compares the logits of a random batch in eval mode
   and the gradients of a cross-entropy loss on it, parameter by parameter.

The exit status is 1 when anything differs. safari's code is imported from the checkout, its training stack stood
in for (safari_checkout.py): only safari's model code runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from comparators import ModelShape, build_model
from safari_checkout import check_checkout, checkout_commit, stand_in
from torch import nn

# safari's configs for the two tasks (associative_recall/h3-vs10.yaml, induction_head/h3.yaml, model/layer/h3.yaml)
SAFARI_TASKS = {"associative_recall": (10, 22), "induction_head": (20, 31)}  # vocabulary size, input tokens
SAFARI_MODEL = dict(_name_="lm_simple", d_model=32, n_layer=2, d_inner=128, resid_dropout=0.0, embed_dropout=0.1)
SAFARI_LAYER = dict(_name_="h3", d_state=64, head_dim=1, mode="diag", measure="diag-lin", lr=5e-4)
OUR_MODEL = "h3:pure:shift_b:safari_init"

# safari's parameter names -> ours: whole names, then the parts of a block's names
GLOBAL_NAMES = {
    "backbone.embeddings.word_embeddings.weight": "model.embed_tokens.weight",
    "backbone.ln_f.weight": "model.norm.weight",
    "backbone.ln_f.bias": "model.norm.bias",
}
BLOCK_PARTS = {
    "norm1.": "mixer_norm.",
    "norm2.": "mlp_norm.",
    "mlp.fc1.": "mlp.up_proj.",
    "mlp.fc2.": "mlp.down_proj.",
    "mixer.output_linear.": "mixer.o_proj.",
    "mixer.ssm_k_kernel.kernel.C": "mixer.shift_ssm.weight",
    "mixer.ssm_k_kernel.kernel.B": "mixer.shift_ssm.B",
    "mixer.ssm_k_D": "mixer.shift_ssm.D",
    "mixer.kernel.kernel.inv_A_real": "mixer.diag_ssm.log_neg_A_real",
    "mixer.kernel.kernel.": "mixer.diag_ssm.",
    "mixer.D": "mixer.diag_ssm.D",
}
LEADING_CHANNEL = ("ssm_k_kernel.kernel.C", "kernel.kernel.C")  # safari's C carries a channel axis of size 1
TIED = "lm_head.weight"  # safari ties it to the word embeddings, as ours

WEIGHT_NOISE = 0.2  # added to every weight before the outputs are compared
LOGIT_TOLERANCE = 1e-5  # relative to the largest logit
GRADIENT_TOLERANCE = 1e-4  # relative to the largest entry of each parameter's gradient
STANDARD_ERRORS = 5.0
KS_LEVEL = 1e-4  # of each parameter's Kolmogorov-Smirnov test (some 100 of them: a false flag about 1% of the time)
FIXED_TOLERANCE = 1e-6  # relative: values set by a formula, computed in two ways (pi * n in float32)


def our_name(safari_name: str) -> str:
    """Our parameter's name for one of safari's."""
    if safari_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[safari_name]
    parts = safari_name.split(".", 3)
    if len(parts) < 4 or parts[:2] != ["backbone", "layers"]:
        raise KeyError(f"no counterpart for safari's parameter {safari_name!r}")
    index, rest = parts[2:]
    part = next((part for part in BLOCK_PARTS if rest.startswith(part)), "")
    return f"model.layers.{index}.{BLOCK_PARTS.get(part, '')}{rest[len(part):]}"


STOOD_IN = ("pytorch_lightning", "hydra", "omegaconf", "rich", "wandb", "torchvision")  # see safari_checkout.py


def import_safari(safari_dir: Path):
    """safari's ``instantiate`` and model registry, imported from the checkout."""
    check_checkout(safari_dir)
    stand_in(STOOD_IN)
    from src.utils import instantiate, registry  # noqa: PLC0415 (importable only now)

    return instantiate, registry


# ----------------------------------------------------------------------------------------------------------------------
# The comparisons
# ----------------------------------------------------------------------------------------------------------------------
def safari_model(instantiate, registry, vocab_size: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    config = {**SAFARI_MODEL, "vocab_size": vocab_size, "layer": dict(SAFARI_LAYER)}
    return instantiate(registry.model, config)


def our_model(vocab_size: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    longest = max(length for _, length in SAFARI_TASKS.values())
    shape = ModelShape(vocab_size=vocab_size, hidden_size=SAFARI_MODEL["d_model"], num_layers=SAFARI_MODEL["n_layer"],
                       num_heads=1, intermediate_size=SAFARI_MODEL["d_inner"], max_length=longest)
    return build_model(OUR_MODEL, shape)


def safari_tensor(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """safari's parameter in our layout."""
    return tensor[0] if name.endswith(LEADING_CHANNEL) else tensor


def load_safari_weights(model: nn.Module, safari_parameters: dict[str, torch.Tensor]) -> None:
    """Copies safari's parameters, by its names, into ours (its tied output head is our tied one)."""
    with torch.no_grad():
        for name, value in safari_parameters.items():
            if name != TIED:
                model.get_parameter(our_name(name)).copy_(safari_tensor(name, value))


def cdf_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs of ``a`` and ``b``."""
    a, b = a.sort().values, b.sort().values
    points = torch.cat([a, b])
    below_a = torch.searchsorted(a, points, right=True) / a.numel()
    below_b = torch.searchsorted(b, points, right=True) / b.numel()
    return (below_a - below_b).abs().max().item()


def cdf_gap_bound(n: int, m: int) -> float:
    """The gap two samples of sizes n and m drawn from one distribution exceed with probability KS_LEVEL (the
    Kolmogorov distribution's asymptotic tail)."""
    return math.sqrt(-math.log(KS_LEVEL / 2) / 2 * (n + m) / (n * m))


def compare_values(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Compares one parameter's initial values in two models, ``draws x entries`` each. An entry with the same
    value in every draw is fixed by the initialisation (a constant, the S4D-Lin imaginary parts): fixed entries must
    be the same entries in both and hold the same values, to float rounding. The drawn entries, pooled, must agree
    in mean and standard deviation (within STANDARD_ERRORS) and in distribution (the Kolmogorov-Smirnov gap)."""
    row = {"safari": (a.mean().item(), a.std().item()), "our": (b.mean().item(), b.std().item()), "gap": None}
    if a.shape != b.shape:
        return {**row, "ok": False, "note": f"{a[0].numel()} against {b[0].numel()} values"}
    fixed_a, fixed_b = (a == a[0]).all(0), (b == b[0]).all(0)
    if not torch.equal(fixed_a, fixed_b):
        return {**row, "ok": False, "note": f"{(fixed_a != fixed_b).sum().item()} entries fixed in one model only"}
    notes, ok = [], True
    if fixed_a.any():
        fixed, other = a[0, fixed_a], b[0, fixed_a]
        difference = ((fixed - other).abs().max() / fixed.abs().max().clamp_min(1e-30)).item()
        ok = difference <= FIXED_TOLERANCE
        notes.append(f"{'all' if fixed_a.all() else fixed_a.sum().item()} fixed"
                     + (f", to {difference:.0e} of the largest" if difference else ""))
    if not fixed_a.all():
        x, y = a[:, ~fixed_a].flatten(), b[:, ~fixed_a].flatten()
        spread = max(x.std().item(), y.std().item())
        error = spread / math.sqrt(x.numel())  # standard error of a mean; a standard deviation's is smaller
        row["gap"] = (cdf_gap(x, y), cdf_gap_bound(x.numel(), y.numel()))
        ok = (ok and abs(x.mean().item() - y.mean().item()) <= STANDARD_ERRORS * math.sqrt(2) * error
              and abs(x.std().item() - y.std().item()) <= STANDARD_ERRORS * error and row["gap"][0] <= row["gap"][1])
    return {**row, "ok": ok, "note": "; ".join(notes)}


def compare_initialisation(make_safari, make_ours, draws: int) -> list[dict]:
    pooled: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for seed in range(draws):
        ours = dict(make_ours(seed).named_parameters())
        for name, param in make_safari(seed).named_parameters():
            if name == TIED:
                continue
            safari_values, our_values = pooled.setdefault(name, ([], []))
            safari_values.append(safari_tensor(name, param.detach()).flatten().double())
            our_values.append(ours[our_name(name)].detach().flatten().double())
    rows = []
    for name, (safari_values, our_values) in pooled.items():
        if safari_values[0].numel() != our_values[0].numel():
            rows.append({"name": name, "ok": False,
                         "note": f"{safari_values[0].numel()} against {our_values[0].numel()} values"})
            continue
        rows.append({"name": name, "ours": our_name(name),
                     **compare_values(torch.stack(safari_values), torch.stack(our_values))})
    return rows


def compare_outputs(safari: nn.Module, ours: nn.Module, vocab_size: int, seq_len: int) -> dict:
    """Logits and gradients of both on one batch, safari's weights copied into ours."""
    safari_params, our_params = dict(safari.named_parameters()), dict(ours.named_parameters())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in safari_params.values():
            # Away from the initialisation, where activations of std-0.02 weights are too small to tell e.g. the
            # tanh GELU from the exact one.
            param.add_(WEIGHT_NOISE * torch.randn(param.shape, generator=generator))
    load_safari_weights(ours, safari_params)
    safari.eval()
    ours.eval()
    inputs = torch.randint(0, vocab_size, (8, seq_len), generator=generator)
    targets = torch.randint(0, vocab_size, (8, seq_len), generator=generator)
    safari_logits, our_logits = safari(inputs)[0].logits, ours(inputs).logits
    for logits in (safari_logits, our_logits):
        nn.functional.cross_entropy(logits.reshape(-1, vocab_size), targets.reshape(-1)).backward()
    worst_name, worst = "", 0.0
    for name, param in safari_params.items():
        if name == TIED:
            continue
        safari_grad = safari_tensor(name, param.grad)
        difference = (safari_grad - our_params[our_name(name)].grad).abs().max().item()
        relative = difference / max(safari_grad.abs().max().item(), 1e-30)
        if relative > worst:
            worst_name, worst = name, relative
    logit_difference, logit_scale = (safari_logits - our_logits).abs().max().item(), safari_logits.abs().max().item()
    return {"logit_difference": logit_difference, "logit_scale": logit_scale,
            "gradient_difference": worst, "gradient_worst": worst_name,
            "ok": logit_difference <= LOGIT_TOLERANCE * logit_scale and worst <= GRADIENT_TOLERANCE}


def report(results: dict, draws: int, safari_dir: Path) -> str:
    lines = [f"# safari's H3 model and `{OUR_MODEL}`", "",
             f"HazyResearch/safari at commit {checkout_commit(safari_dir)}; torch {torch.__version__}. Command: "
             f"`python scripts/bench/safari_equivalence.py --safari_dir SAFARI --draws {draws}`.", ""]
    for task, result in results.items():
        outputs = result["outputs"]
        lines += [f"## {task} (vocabulary {SAFARI_TASKS[task][0]}, {result['parameters'][0]:,} parameters in safari's "
                  f"model, {result['parameters'][1]:,} in ours)", "",
                  f"The same weights (safari's initial ones plus N(0, {WEIGHT_NOISE}^2) noise), eval mode, a batch "
                  f"of 8 x {result['seq_len']}: logits differ by at most "
                  f"{outputs['logit_difference']:.1e} (largest logit {outputs['logit_scale']:.2f}); gradients by at "
                  f"most {outputs['gradient_difference']:.1e} of a parameter's largest gradient entry "
                  f"(`{outputs['gradient_worst']}`).", "",
                  f"Initial values over {draws} draws of each model (mean / std of all entries; the largest gap "
                  f"between the two CDFs of the drawn entries, and the gap that one distribution exceeds with "
                  f"probability {KS_LEVEL:g}):", "",
                  "| safari's parameter | ours | safari | ours | CDF gap (bound) | |", "|---|---|---|---|---|---|"]
        for row in result["initialisation"]:
            if "safari" not in row:
                lines.append(f"| `{row['name']}` | | | | | {row['note']} |")
                continue
            verdict = "same" if row["ok"] else "**differs**"
            gap = f"{row['gap'][0]:.3f} ({row['gap'][1]:.3f})" if row["gap"] else "-"
            lines.append(f"| `{row['name']}` | `{row['ours']}` | {row['safari'][0]:.4f} / {row['safari'][1]:.4f} | "
                         f"{row['our'][0]:.4f} / {row['our'][1]:.4f} | {gap} | {verdict}"
                         f"{' (' + row['note'] + ')' if row['note'] else ''} |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--safari_dir", type=Path, required=True, help="a checkout of HazyResearch/safari")
    parser.add_argument("--draws", type=int, default=8, help="initialisations of each model to compare (default 8)")
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)
    if args.draws < 2:
        parser.error(f"--draws must be at least 2, got {args.draws}")
    return args


def main(argv: list[str] | None = None) -> bool:
    args = parse_args(argv)
    instantiate, registry = import_safari(args.safari_dir)
    results = {}
    for task, (vocab_size, seq_len) in SAFARI_TASKS.items():
        def make_safari(seed: int, vocab_size: int = vocab_size) -> nn.Module:
            return safari_model(instantiate, registry, vocab_size, seed)

        def make_ours(seed: int, vocab_size: int = vocab_size) -> nn.Module:
            return our_model(vocab_size, seed)

        safari, ours = make_safari(0), make_ours(0)
        results[task] = {
            "parameters": (sum(p.numel() for p in safari.parameters()), sum(p.numel() for p in ours.parameters())),
            "seq_len": seq_len,
            "initialisation": compare_initialisation(make_safari, make_ours, args.draws),
            "outputs": compare_outputs(safari, ours, vocab_size, seq_len),
        }
    text = report(results, args.draws, args.safari_dir)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    same = all(result["parameters"][0] == result["parameters"][1] and result["outputs"]["ok"]
               and all(row["ok"] for row in result["initialisation"]) for result in results.values())
    print("same model" if same else "the models differ", file=sys.stderr)
    return same


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
