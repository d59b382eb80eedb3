"""Publish a checkpoint folder to the Hugging Face Hub in one commit, with a model card filled from the training run.

`push_checkpoint` is what `scripts/push_to_hub.py` and the training scripts' `--push_to_hub` call. It works for any
folder that `AutoConfig` / `AutoModel*` load (this family's models, or any transformers model), in four steps:

1. Check, before any network call, that the folder loads: `AutoConfig`, then the Auto class for its
   `architectures[0]` (`*ForCausalLM` -> `AutoModelForCausalLM`, `*ForSequenceClassification` ->
   `AutoModelForSequenceClassification`, otherwise `AutoModel`) with no weight missing, the tokenizer when the folder
   has one, and every module named in `auto_map` present as a `.py` file. A folder that fails is refused with
   `CheckpointError`.
2. Plan the upload: config, generation config, tokenizer files, `*.py` files (the `auto_map` code for
   `trust_remote_code=True`, shipped as they are), `eval_results.json`, `training_args.json` and the weights as
   safetensors. Weights are re-saved with `save_pretrained(max_shard_size=...)` into a temporary folder when they are
   pickles (`*.bin`) or a safetensors file is larger than `max_shard_size`; otherwise the files go up unchanged.
   Training state is left out: sub-folders (`checkpoint-*/`, `runs/`), hidden files, pickles (`*.bin`, `*.pt`,
   `*.pth`, `training_args.bin`) and `README.md`, which is replaced by the rendered card.
3. Render `README.md` from `model_cards/<model_type>.md` (huggingface_hub's default template for other model types)
   with `ModelCard.from_template`: YAML metadata (`library_name: transformers`, `pipeline_tag`, `license`, `tags`,
   `datasets`, `base_model`, `model-index` built from the eval results) and text on loading, architecture, data,
   results and limits.
4. Upload: `create_repo(exist_ok=True)`, `create_branch` for a revision other than main, then a single
   `create_commit` holding every file, plus deletions of weight files left on the branch by an earlier push that the
   new weights replace (a stale `model.safetensors` next to a new sharded index would be loaded instead of it).

`write_model_card` renders the same card into a folder's own `README.md` (the training scripts call it when they save
the final model), so that a folder is complete before it is pushed: read as it is, or uploaded by another tool. It
loads the model by the folder's path, or by the Hub id it is given; a push renders the card again for its repository.

Run metadata read from the checkpoint folder (both optional; other keys are ignored by the card but the files are
uploaded as they are):

    eval_results.json   {"eval_loss": 3.21,                 mean cross-entropy on the evaluation split (Trainer's key)
                         "perplexity": 24.8,                causal LMs; exp(eval_loss) is reported when absent
                         "eval_accuracy": 0.81,             classification checkpoints
                         "eval_<metric>": ...,              any other numeric Trainer metric, reported as <metric>
                                                            (eval_runtime, *_per_second, epoch are not metrics)
                         "dataset": "wikitext",             Hub dataset id (listed under `datasets:`), or a description
                         "dataset_config": "wikitext-103-raw-v1",
                         "dataset_split": "validation",
                         "train_tokens": 123456789}         tokens seen in training
    training_args.json  a flat JSON object of hyperparameters (TrainingArguments.to_dict() or the pretraining
                         script's arguments); the card shows the keys in `HYPERPARAMETER_KEYS`, takes `dataset` /
                         `dataset_name`, `dataset_config` / `dataset_config_name` and `train_tokens` when
                         eval_results.json lacks them, and `base_model` / `model_name_or_path` as the model this one
                         was fine-tuned from (in the metadata when it is a Hub id, in the text only when
                         it is a local folder); `steps`, `max_steps` and `stop_reason` (`run_outputs.RunProgress`)
                         say how far training went, and the card says so plainly when a run stopped before its
                         planned steps.

Failures and what they leave behind: everything that can be checked locally (token present, checkpoint loads, card
renders, sizes parse) is checked before the first request. On the Hub a commit is atomic: LFS files uploaded before a
failed commit are referenced by nothing, so after a 401, 403, 5xx or a refused connection the branch is as it was and
`push_checkpoint` raises `HubPushError` whose message is one line saying what happened and what to do; success is
reported only with the commit that the Hub returned. The repository itself may have been created empty by step 4.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    get_token,
)
from huggingface_hub.errors import HfHubHTTPError

# The HTTP client huggingface_hub sends its requests with (httpx2 in huggingface_hub 2.x), as it exports it for
# downstream code: its transport errors (connection refused, timeouts) reach us unwrapped.
from huggingface_hub.utils import httpx
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.utils import logging as transformers_logging
from transformers.utils.hub import convert_file_size_to_int

from .run_outputs import EVAL_RESULTS_FILE, TRAINING_ARGS_FILE, RunProgress, perplexity

# Files above 5 GB cannot go to S3 in one PUT and resume badly; it was transformers' default shard size up to 4.x.
DEFAULT_MAX_SHARD_SIZE = "5GB"
DEFAULT_LICENSE = "apache-2.0"
# Card templates live in the repository's model_cards/ (a source or editable install); pass template_dir otherwise.
MODEL_CARDS_DIR = Path(__file__).resolve().parents[1] / "model_cards"
CARD_TEMPLATES = {"hamiltonian_transformer": "hamiltonian_transformer.md", "h3": "h3.md"}
EXTRA_TAGS = {
    "hamiltonian_transformer": ["hamiltonian-transformer", "symplectic-integrator", "energy-attention"],
    "h3": ["h3", "state-space-model", "ssm"],
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "merges.txt", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Weight files that a push replaces on the branch: `model.safetensors`, its shards and index, and pickled weights.
WEIGHT_FILE_RE = re.compile(r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
HYPERPARAMETER_KEYS = (
    "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "optim", "adam_beta1", "adam_beta2",
    "max_grad_norm", "per_device_train_batch_size", "gradient_accumulation_steps", "total_batch_size",
    "block_size", "max_seq_length", "seq_len", "num_train_epochs", "max_steps", "seed", "bf16", "fp16",
    "mixed_precision",
)
NOT_METRICS = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch")
# config.json keys that say nothing about the architecture and stay out of the card's configuration table.
CONFIG_BOILERPLATE = {
    "architectures", "auto_map", "model_type", "transformers_version", "dtype", "torch_dtype", "bos_token_id",
    "eos_token_id", "pad_token_id", "use_cache", "output_attentions", "output_hidden_states", "return_dict",
    "id2label", "label2id", "problem_type", "tie_word_embeddings",
}
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
DATA_FILE_SUFFIXES = (".txt", ".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow")


class CheckpointError(ValueError):
    """The checkpoint folder or the arguments were refused before any network call."""


class HubPushError(RuntimeError):
    """The push was not made (no token, the Hub or the network failed); the one-line message says what happened,
    whether anything was committed, and what to do."""


@dataclass
class PushPlan:
    """What a push uploads: repo path -> local file, the rendered card, and facts printed with the plan."""

    checkpoint_dir: Path
    files: dict[str, Path]
    card: ModelCard
    notes: list[str] = field(default_factory=list)
    workdir: tempfile.TemporaryDirectory | None = None  # holds re-saved weights until the upload is done

    def cleanup(self) -> None:
        if self.workdir is not None:
            self.workdir.cleanup()

    def describe(self) -> str:
        """The file list with sizes, one file per line."""
        total = sum(path.stat().st_size for path in self.files.values())
        lines = [f"files ({len(self.files)} and README.md, {_human_bytes(total)} without it):"]
        lines += [f"  {name:<44} {_human_bytes(path.stat().st_size):>10}" for name, path in sorted(self.files.items())]
        lines.append(f"  {'README.md':<44} {_human_bytes(len(str(self.card).encode())):>10}  (rendered model card)")
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def parse_max_shard_size(value: int | str) -> int:
    """Bytes in a size such as `"5GB"`, `"500MB"`, `"2GiB"` or `"1000000"`."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    try:
        size = convert_file_size_to_int(value)
    except ValueError:
        size = 0
    if size <= 0:
        raise CheckpointError(f"max_shard_size={value!r} is not a size: use an integer number of bytes or a number "
                              "with a unit, e.g. 5GB, 500MB, 2GiB")
    return size


def auto_class_for(config: PretrainedConfig) -> type:
    """The Auto class that loads `config.architectures[0]` with its head."""
    architecture = (config.architectures or [""])[0]
    if architecture.endswith("ForCausalLM"):
        return AutoModelForCausalLM
    if architecture.endswith("ForSequenceClassification"):
        return AutoModelForSequenceClassification
    return AutoModel


def pipeline_tag_for(config: PretrainedConfig) -> str | None:
    return {AutoModelForCausalLM: "text-generation", AutoModelForSequenceClassification: "text-classification"}.get(
        auto_class_for(config))


def load_checkpoint(checkpoint_dir: str | Path, trust_remote_code: bool = False) -> PreTrainedModel:
    """Load the folder as a user would, raising `CheckpointError` for anything that would break after upload."""
    folder = Path(checkpoint_dir)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a checkpoint folder: it has no config.json")
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as err:  # transformers raises ValueError, KeyError, OSError... for bad configs
        raise CheckpointError(f"{folder}/config.json does not load with AutoConfig: {_one_line(err)}") from err
    for reference in (getattr(config, "auto_map", None) or {}).values():
        for ref in reference if isinstance(reference, (list, tuple)) else [reference]:
            if ref is None or "--" in ref:  # `repo--module.Class` points at code in another repository
                continue
            module_file = ref.rsplit(".", 1)[0] + ".py"
            if not (folder / module_file).is_file():
                raise CheckpointError(f"config.json auto_map names {ref} but {folder} has no {module_file}: "
                                      "trust_remote_code=True loads would fail after upload")
    auto_class = auto_class_for(config)
    try:
        model, info = auto_class.from_pretrained(folder, dtype="auto", trust_remote_code=trust_remote_code,
                                                 output_loading_info=True)
    except Exception as err:  # any failure to build or fill the model refuses the folder
        raise CheckpointError(f"{folder} does not load with {auto_class.__name__}: {_one_line(err)}") from err
    missing = sorted(info.get("missing_keys") or []) + sorted(info.get("mismatched_keys") or [])
    if missing:
        raise CheckpointError(f"{folder}: weights missing or of the wrong shape, so {auto_class.__name__} would "
                              f"initialise them at random: {', '.join(map(str, missing[:5]))}")
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        try:
            AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        except Exception as err:  # a tokenizer that does not load is as broken as missing weights
            raise CheckpointError(f"{folder}: the tokenizer files do not load with AutoTokenizer: "
                                  f"{_one_line(err)}") from err
    return model


def read_run_metadata(checkpoint_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """`eval_results.json` and `training_args.json` from the folder ({} when absent)."""
    out = []
    for name in (EVAL_RESULTS_FILE, TRAINING_ARGS_FILE):
        path = Path(checkpoint_dir) / name
        if not path.is_file():
            out.append({})
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path} is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
        out.append(data)
    return out[0], out[1]


def eval_metrics(eval_results: dict[str, Any], causal_lm: bool) -> dict[str, float]:
    """Metric name -> value from eval_results.json, with perplexity = exp(eval_loss) for causal LMs."""
    metrics = {}
    if isinstance(eval_results.get("perplexity"), (int, float)):
        metrics["perplexity"] = float(eval_results["perplexity"])
    elif causal_lm and isinstance(eval_results.get("eval_loss"), (int, float)):
        metrics["perplexity"] = perplexity(eval_results["eval_loss"])
    for key, value in eval_results.items():
        if key.startswith("eval_") and key not in NOT_METRICS and isinstance(value, (int, float)):
            metrics["loss" if key == "eval_loss" else key.removeprefix("eval_")] = float(value)
    return metrics


def _is_hub_id(value: str | None) -> bool:
    """Whether `value` names something on the Hub rather than a local path or file."""
    return bool(value) and HUB_ID_RE.match(value) is not None and not value.endswith(DATA_FILE_SUFFIXES) \
        and not Path(value).exists()


def render_card(config: PretrainedConfig, repo_id: str, eval_results: dict[str, Any],
                training_args: dict[str, Any], num_parameters: int, has_tokenizer: bool,
                template_dir: str | Path = MODEL_CARDS_DIR, license: str = DEFAULT_LICENSE) -> ModelCard:
    """The README.md for the repository: metadata for the Hub plus text from `template_dir/<model_type>.md`
    (huggingface_hub's default template for model types without one)."""
    model_type = config.model_type
    pipeline_tag = pipeline_tag_for(config)
    metrics = eval_metrics(eval_results, causal_lm=pipeline_tag == "text-generation")
    dataset = eval_results.get("dataset") or training_args.get("dataset") or training_args.get("dataset_name")
    dataset_config = (eval_results.get("dataset_config") or training_args.get("dataset_config")
                      or training_args.get("dataset_config_name"))
    split = eval_results.get("dataset_split")
    train_tokens = eval_results.get("train_tokens") or training_args.get("train_tokens")
    fine_tuned_from = training_args.get("base_model") or training_args.get("model_name_or_path")
    # Only a Hub id goes into the metadata (and gets a link); a local folder is named in the text.
    base_model = fine_tuned_from if _is_hub_id(fine_tuned_from) else None
    has_remote_code = bool(getattr(config, "auto_map", None))
    progress = RunProgress.from_metadata(training_args)

    # The Hub's model-index needs a dataset for every result; without one the metrics stay in the text only.
    eval_entries = [
        EvalResult(task_type=pipeline_tag or "feature-extraction", dataset_type=str(dataset),
                   dataset_name=str(dataset), dataset_config=dataset_config, dataset_split=split,
                   metric_type=name, metric_name=name.replace("_", " ").capitalize(), metric_value=round(value, 4))
        for name, value in metrics.items()
    ] if dataset else None
    card_data = ModelCardData(
        library_name="transformers", pipeline_tag=pipeline_tag, license=license,
        tags=[model_type, *EXTRA_TAGS.get(model_type, []), *(["custom_code"] if has_remote_code else [])],
        datasets=[dataset] if _is_hub_id(dataset) else None, base_model=base_model,
        model_name=repo_id.split("/")[-1], eval_results=eval_entries,
    )
    architecture = (config.architectures or [type(config).__name__])[0]
    values = {
        "model_id": repo_id,
        "model_type": model_type,
        "architecture": architecture,
        "auto_class": auto_class_for(config).__name__,
        "has_remote_code": has_remote_code,
        "has_tokenizer": has_tokenizer,
        "num_parameters": _human_count(num_parameters),
        "num_layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "max_positions": getattr(config, "max_position_embeddings", None),
        "num_labels": config.num_labels if pipeline_tag == "text-classification" else None,
        "config": config.to_dict(),
        "config_rows": [(key, _compact(value)) for key, value in sorted(config.to_diff_dict().items())
                        if key not in CONFIG_BOILERPLATE and not key.startswith("_")],
        "dataset": dataset,
        "dataset_config": dataset_config,
        "dataset_split": split,
        "train_tokens": f"{int(train_tokens):,}" if train_tokens else None,
        "base_model": base_model,
        "local_base_model": None if base_model else fine_tuned_from,
        "metrics": [(name.replace("_", " "), f"{value:.4g}") for name, value in metrics.items()],
        "hyperparameters": [(key, _compact(training_args[key])) for key in HYPERPARAMETER_KEYS
                            if key in training_args],
        "steps": progress.steps if progress else None,
        "planned_steps": progress.max_steps if progress else None,
        "cut_short": bool(progress and progress.cut_short),
        "stop_reason": (progress.stop_reason or "stopped before the planned steps") if progress else None,
        "license": license,
    }
    if model_type not in CARD_TEMPLATES:
        return ModelCard.from_template(card_data, **_default_template_values(values))
    template = Path(template_dir) / CARD_TEMPLATES[model_type]
    if not template.is_file():
        raise CheckpointError(f"card template {template} not found: pass template_dir pointing at the "
                              "repository's model_cards/ folder")
    return ModelCard.from_template(card_data, template_path=str(template), **values)


def _default_template_values(values: dict[str, Any]) -> dict[str, Any]:
    """Fill huggingface_hub's default card template for model types that have no template here."""
    shape = ", ".join(f"{label} {values[key]}" for label, key in (
        ("layers", "num_layers"), ("hidden size", "hidden_size"), ("vocabulary", "vocab_size")) if values[key])
    data = values["dataset"] or "not recorded"
    tokens = f" ({values['train_tokens']} tokens)" if values["train_tokens"] else ""
    return {
        "model_id": values["model_id"],
        "model_summary": f"A `{values['architecture']}` checkpoint ({values['num_parameters']} parameters).",
        "model_type": f"{values['model_type']} ({shape})",
        "get_started_code": (
            f"```python\nfrom transformers import {values['auto_class']}\n\n"
            f"model = {values['auto_class']}.from_pretrained(\"{values['model_id']}\""
            f"{', trust_remote_code=True' if values['has_remote_code'] else ''})\n```"),
        "training_data": f"{data}{tokens}",
        "training_regime": "; ".join(f"{k}: {v}" for k, v in values["hyperparameters"]) or None,
        "results": "; ".join(f"{k}: {v}" for k, v in values["metrics"]) or None,
        "license": values["license"],
        "base_model": values["base_model"],
    }


def checkpoint_card(folder: Path, model: PreTrainedModel, model_id: str, *,
                    template_dir: str | Path = MODEL_CARDS_DIR, license: str = DEFAULT_LICENSE) -> ModelCard:
    """The card of a checkpoint folder whose model is loaded (`load_checkpoint`), with its run metadata."""
    eval_results, training_args = read_run_metadata(folder)
    has_tokenizer = any((folder / name).is_file() for name in TOKENIZER_FILES)
    return render_card(model.config, model_id, eval_results, training_args, model.num_parameters(), has_tokenizer,
                       template_dir, license=license)


def write_model_card(checkpoint_dir: str | Path, model_id: str | None = None, *,
                     template_dir: str | Path = MODEL_CARDS_DIR, license: str = DEFAULT_LICENSE,
                     trust_remote_code: bool = False) -> Path:
    """Render the card into ``checkpoint_dir/README.md`` and return that path.

    ``model_id`` is what the card's examples load: the Hub id the folder will have, or by default the folder's path.
    The folder is loaded first, as for a push, so a folder that would not load gets no card (`CheckpointError`).
    """
    folder = Path(checkpoint_dir)
    # The load is only a check and a parameter count: its progress bar would be noise in a training run's output.
    progress_bar = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        model = load_checkpoint(folder, trust_remote_code=trust_remote_code)
    finally:
        if progress_bar:
            transformers_logging.enable_progress_bar()
    card = checkpoint_card(folder, model, model_id or folder.as_posix(), template_dir=template_dir, license=license)
    path = folder / "README.md"
    path.write_text(str(card))
    return path


def plan_push(checkpoint_dir: str | Path, repo_id: str, *, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
              template_dir: str | Path = MODEL_CARDS_DIR, license: str = DEFAULT_LICENSE,
              trust_remote_code: bool = False) -> PushPlan:
    """Validate the folder and build the list of files and the card (no network). Call `cleanup()` when done."""
    folder = Path(checkpoint_dir)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise CheckpointError(f"repo_id={repo_id!r} must be NAMESPACE/NAME, e.g. your-user/ht-tiny")
    max_bytes = parse_max_shard_size(max_shard_size)
    model = load_checkpoint(folder, trust_remote_code=trust_remote_code)

    files, notes = {}, []
    for path in sorted(folder.iterdir()):
        name = path.name
        if not path.is_file() or name.startswith(".") or name == "README.md" or WEIGHT_FILE_RE.match(name):
            continue
        if name.endswith(PICKLE_SUFFIXES):
            notes.append(f"{name} is a pickle (training state or old-style weights) and is not uploaded")
            continue
        files[name] = path

    weights = [path for path in folder.iterdir() if WEIGHT_FILE_RE.match(path.name)]
    resharded = any(path.name.endswith(".bin") for path in weights) or any(
        path.suffix == ".safetensors" and path.stat().st_size > max_bytes for path in weights)
    workdir = None
    if resharded:
        workdir = tempfile.TemporaryDirectory(prefix="push_to_hub_")
        model.save_pretrained(workdir.name, max_shard_size=max_bytes)
        weights = [path for path in Path(workdir.name).iterdir() if WEIGHT_FILE_RE.match(path.name)]
        notes.append(f"weights re-saved as safetensors in shards of at most {_human_bytes(max_bytes)}")
    else:
        weights = [path for path in weights if path.suffix == ".safetensors" or path.name == SAFETENSORS_INDEX]
    files |= {path.name: path for path in weights}

    if not any(name in files for name in TOKENIZER_FILES):
        notes.append("the checkpoint has no tokenizer files: users will need the tokenizer from elsewhere")
    try:
        card = checkpoint_card(folder, model, repo_id, template_dir=template_dir, license=license)
    except Exception:
        if workdir is not None:
            workdir.cleanup()
        raise
    return PushPlan(checkpoint_dir=folder, files=files, card=card, notes=notes, workdir=workdir)


def stale_weight_files(remote_files: Iterable[str], uploaded: Iterable[str]) -> list[str]:
    """Weight files on the branch that the new upload does not overwrite and that would shadow or confuse it."""
    uploaded = set(uploaded)
    return sorted(name for name in remote_files if WEIGHT_FILE_RE.match(name) and name not in uploaded)


def resolve_token(token: str | None) -> str:
    """The token to write with: `token`, else HF_TOKEN, else the one saved by `hf auth login`."""
    token = token or get_token()
    if not token:
        raise HubPushError("no Hugging Face token: set the HF_TOKEN environment variable to a token with write "
                           "access, run `hf auth login`, or pass --token")
    return token


def upload(plan: PushPlan, repo_id: str, *, token: str, private: bool = False, revision: str | None = None,
           commit_message: str | None = None, api: HfApi | None = None) -> str:
    """Create the repo if needed and commit `plan` in one commit; return the commit URL."""
    api = api or HfApi()
    branch = revision or "main"
    stage = "creating the repository"
    try:
        api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
        if branch != "main":
            stage = f"creating branch {branch}"
            api.create_branch(repo_id, branch=branch, token=token, exist_ok=True)
        stage = "listing the files already in the repository"
        remote = api.list_repo_files(repo_id, revision=branch, token=token)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
                      for name, path in sorted(plan.files.items())]
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(plan.card).encode()))
        operations += [CommitOperationDelete(path_in_repo=name)
                       for name in stale_weight_files(remote, [*plan.files, "README.md"])]
        stage = "uploading and committing"
        info = api.create_commit(repo_id, operations=operations, token=token, revision=branch,
                                 commit_message=commit_message or f"Upload {plan.checkpoint_dir.name}")
    except Exception as err:
        message = explain_hub_error(err, repo_id=repo_id, stage=stage, endpoint=api.endpoint)
        if message is None:
            raise
        raise HubPushError(message) from err
    return info.commit_url


def explain_hub_error(err: BaseException, *, repo_id: str, stage: str, endpoint: str) -> str | None:
    """One line for an HTTP or network failure anywhere in `err`'s causes; None for other errors."""
    if isinstance(err, ValueError) and "Invalid metadata in README.md" in str(err):
        # huggingface_hub checks the card with the Hub before uploading anything
        return f"the Hub rejected the model card metadata ({_one_line(err)}); nothing was uploaded"
    http = _find_cause(err, HfHubHTTPError)
    network = _find_cause(err, httpx.TransportError)
    if http is not None and http.response is not None:
        status = http.response.status_code
        server = _one_line(http.server_message or http.response.reason_phrase or "")
        if status == 401:
            return (f"the Hub rejected the token (401 Unauthorized: {server}) while {stage}; nothing was committed. "
                    "Set HF_TOKEN to a valid token with write access or pass --token")
        if status == 403:
            return (f"the Hub refused to write to {repo_id} (403 Forbidden: {server}) while {stage}; nothing was "
                    "committed. The repository or its namespace belongs to someone else, or the token is read-only: "
                    "push to your own namespace or use a token with write access to it")
        if status == 404:
            return (f"{repo_id} or its revision was not found (404: {server}) while {stage}; nothing was committed. "
                    "Check the repository id and --revision")
        if status >= 500:
            return (f"the Hub failed with {status} {http.response.reason_phrase} ({server}) while {stage}; nothing "
                    "was committed (the commit is all or nothing). Retry later")
        return f"the Hub refused the request ({status}: {server}) while {stage}; nothing was committed"
    if network is not None:
        committed = ("the commit may not have been made: check the repository before retrying"
                     if stage == "uploading and committing" else "nothing was committed")
        return (f"cannot reach the Hub at {endpoint} ({_one_line(network) or type(network).__name__}) while "
                f"{stage}; {committed}. Check the network connection and HF_ENDPOINT")
    return None


def push_checkpoint(checkpoint_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                    commit_message: str | None = None, token: str | None = None, dry_run: bool = False,
                    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, template_dir: str | Path = MODEL_CARDS_DIR,
                    license: str = DEFAULT_LICENSE, trust_remote_code: bool = False,
                    log: Callable[[str], None] = print) -> str | None:
    """Validate, plan and upload `checkpoint_dir` to `repo_id`; return the commit URL (None for a dry run).

    `log` receives the human-readable progress (the file list and card on a dry run). Raises `CheckpointError` or
    `HubPushError` with a one-line message.
    """
    if not dry_run:
        token = resolve_token(token)
    plan = plan_push(checkpoint_dir, repo_id, max_shard_size=max_shard_size, template_dir=template_dir,
                     license=license, trust_remote_code=trust_remote_code)
    try:
        target = f"{repo_id} ({'private' if private else 'public'}), revision {revision or 'main'}"
        if dry_run:
            log(f"dry run: nothing is uploaded. Would commit to {target}")
            log(plan.describe())
            log("----- README.md -----")
            log(str(plan.card))
            return None
        log(f"checkpoint {plan.checkpoint_dir} loads; committing to {target}")
        log(plan.describe())
        url = upload(plan, repo_id, token=token, private=private, revision=revision, commit_message=commit_message)
        log(f"committed: {url}")
        return url
    finally:
        plan.cleanup()


def _find_cause(err: BaseException | None, kind: type) -> Any:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _one_line(value: Any, limit: int = 400) -> str:
    """`value` as one line, cut at `limit` characters (transformers' load errors run to paragraphs)."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _compact(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list, tuple, bool)) or value is None else str(value)


def _human_bytes(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"


def _human_count(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)
