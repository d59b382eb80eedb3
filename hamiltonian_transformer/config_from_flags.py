"""From the scripts' flags to a model: `--config_overrides` parsing, refusals, run checks, loading a model folder.

The scripts build their configs and load their checkpoints here, so that an unknown key, a value of the wrong type, an
override the config would silently rewrite, a `--seq_len` above the model's limit, a model folder that does not exist,
a checkpoint of the wrong kind or an unreadable weights file is refused with one line naming the flag, the value or
the file (a `ValueError`; tested in tests/test_config_from_flags.py).
"""

from __future__ import annotations

import ast
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .presets import PRESETS

# `k=v` pairs are separated by commas, but list values ("attn_layer_idx=[1,8]") hold commas too: split only at a comma
# followed by the next `name=`.
_OVERRIDE_SPLIT = re.compile(r",(?=\s*[A-Za-z_]\w*\s*=)")
_WORD_LITERALS = {"true": True, "false": False, "none": None, "null": None}
_SCALAR_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "list": list, "dict": dict, "tuple": tuple}


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """Parse ``"hidden_size=256,attn_layer_idx=[1, 3],integrator=leapfrog"`` into a dict.

    Values are Python/JSON literals (numbers, lists, ``True``/``true``, ``None``/``null``); anything else is a string.
    """
    if text is None or not text.strip():
        return {}
    overrides = {}
    for item in _OVERRIDE_SPLIT.split(text.strip()):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key.isidentifier() or not raw:
            raise ValueError(f"--config_overrides item {item!r} is not of the form key=value (e.g. hidden_size=256).")
        if key in overrides:
            raise ValueError(f"--config_overrides sets {key!r} twice.")
        overrides[key] = _parse_literal(raw)
    return overrides


def _parse_literal(raw: str) -> Any:
    if raw.lower() in _WORD_LITERALS:
        return _WORD_LITERALS[raw.lower()]
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def config_class_for(model_type: str) -> type[PretrainedConfig]:
    """The registered config class of one of the family's model types, refusing unknown ones."""
    if model_type not in PRESETS:
        raise ValueError(f"--model_type {model_type!r} is not of this family; choose from {list(PRESETS)}.")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"--model_type {model_type!r} is not registered: this installation has no config class for it")
    return CONFIG_MAPPING[model_type]


def _annotation_allows(annotation: str, value: Any) -> bool:
    """Whether ``value`` fits a dataclass field annotation string such as ``"int | list[int] | None"``.

    Only the plain built-in types are checked (int is accepted for float, bool is not accepted for int); an
    annotation naming any other type accepts every value and leaves the check to the config's own validation.
    """
    for part in (p.strip() for p in annotation.split("|")):
        base = part.split("[", 1)[0].strip()
        if base == "None":
            if value is None:
                return True
        elif base not in _SCALAR_TYPES:
            return True
        elif base == "float":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
        elif base == "int":
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif isinstance(value, _SCALAR_TYPES[base]):
            return True
    return False


def check_config_overrides(config_class: type[PretrainedConfig], overrides: dict[str, Any]) -> None:
    """Refuse keys that are not fields of ``config_class`` and values of the wrong built-in type."""
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    for key, value in overrides.items():
        if key not in fields:
            known = sorted(name for name in fields if not name.startswith("_"))
            raise ValueError(
                f"--config_overrides key {key!r} is not a field of {config_class.__name__}; known fields: "
                f"{', '.join(known)}."
            )
        annotation = fields[key].type if isinstance(fields[key].type, str) else _type_name(fields[key].type)
        if not _annotation_allows(annotation, value):
            raise ValueError(f"--config_overrides {key}={value!r}: {config_class.__name__}.{key} must be {annotation}.")


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    return str(annotation)


def build_config(
    model_type: str, preset: str, overrides: dict[str, Any] | None = None, **fixed: Any
) -> PretrainedConfig:
    """Config of ``preset`` for ``model_type`` with user ``overrides`` on top, then ``fixed`` values from the run.

    ``fixed`` holds what the data decides (vocabulary size and special token ids of the tokenizer) and wins over the
    preset; an override of the same key is refused rather than silently replaced. An override that the config
    rewrites while building (a derived field such as ``layer_types``) is refused too.
    """
    config_class = config_class_for(model_type)
    presets = PRESETS[model_type]
    if preset not in presets:
        raise ValueError(f"--preset {preset!r} is not a preset of {model_type}; choose from {list(presets)}.")
    overrides = dict(overrides or {})
    check_config_overrides(config_class, overrides)
    clash = sorted(set(overrides) & set(fixed))
    if clash:
        values = {key: fixed[key] for key in clash}
        raise ValueError(f"--config_overrides cannot set {clash}: the run sets them from the data ({values}).")
    config = AutoConfig.for_model(model_type, **{**presets[preset], **overrides, **fixed})
    for key, value in overrides.items():
        if getattr(config, key) != value:
            raise ValueError(
                f"--config_overrides {key}={value!r} does not stick: {config_class.__name__} derives {key} from other "
                f"fields (it became {getattr(config, key)!r}); set those instead."
            )
    return config


def check_seq_len(seq_len: int, config: PretrainedConfig) -> None:
    if seq_len < 1:
        raise ValueError(f"--seq_len {seq_len} must be a positive number of tokens.")
    if seq_len > config.max_position_embeddings:
        raise ValueError(
            f"--seq_len {seq_len} is above the model's limit max_position_embeddings={config.max_position_embeddings}"
            f" ({config.model_type}); use a shorter --seq_len or --config_overrides max_position_embeddings=N."
        )


def check_mixed_precision(mixed_precision: str, device: torch.device) -> None:
    """Refuse half precision where the device cannot run it.

    bf16 needs a GPU that supports it (CUDA compute capability 8.0+, checked with `torch.cuda.is_bf16_supported`),
    fp16 needs a GPU. On CPU both are refused instead of falling back: CPU autocast to bf16 runs but is emulated and
    slower than float32 on most CPUs, and fp16 gradient scaling needs CUDA.
    """
    if mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"--mixed_precision {mixed_precision!r} is not supported; choose from no, fp16, bf16.")
    if mixed_precision == "no":
        return
    if device.type == "cpu":
        raise ValueError(
            f"--mixed_precision {mixed_precision} needs a GPU with {mixed_precision} support and this run is on CPU; "
            "use --mixed_precision no."
        )
    if mixed_precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"--mixed_precision bf16 needs a GPU with bfloat16 support (compute capability 8.0+); "
            f"{torch.cuda.get_device_name(device)} has none; use --mixed_precision fp16 or no."
        )


# ----------------------------------------------------------------------------------------------------------------
# Model folders
# ----------------------------------------------------------------------------------------------------------------


def _names_a_local_path(name_or_path: str) -> bool:
    """Whether ``name_or_path`` can only mean a local path: not a Hub id, or a path whose parent folder exists here
    (``outputs/run`` with an ``outputs/`` folder), or one written as a path (``./x``, ``/x``, ``~/x``)."""
    if name_or_path.startswith((".", "/", "~")):
        return True
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return True
    parent = Path(name_or_path).parent
    return parent != Path(".") and parent.is_dir()


def check_model_folder(name_or_path: str, flag: str) -> None:
    """Refuse a model folder that does not exist (instead of transformers' "Repo id must be in the form ..." or a
    round of Hub requests for it). A Hub id passes: it is looked up when the model is loaded."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ValueError(f"{flag} {name_or_path} is a file; it must be a model folder (written by save_pretrained) "
                         "or a Hub id")
    if _names_a_local_path(name_or_path):
        raise ValueError(f"{flag} {name_or_path}: no such model folder")


def check_architecture(config: PretrainedConfig, name_or_path: str, suffixes: tuple[str, ...], task: str) -> None:
    """Refuse a checkpoint whose saved architecture is not one of ``suffixes`` (e.g. a classifier where a causal LM is
    needed), instead of loading it with a freshly initialised head."""
    architectures = config.architectures or []
    if architectures and not any(name.endswith(suffixes) for name in architectures):
        raise ValueError(f"{name_or_path} holds a {', '.join(architectures)}, not a {task}")


def load_pretrained_model(auto_class: type, name_or_path: str, flag: str, **kwargs: Any) -> PreTrainedModel:
    """``auto_class.from_pretrained`` with its failures as one line naming the folder, or the weights file that does
    not read (a corrupted safetensors file raises an error that names no file)."""
    check_model_folder(name_or_path, flag)
    try:
        return auto_class.from_pretrained(name_or_path, **kwargs)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        folder = Path(name_or_path).expanduser()
        unreadable = _unreadable_weights(folder) if folder.is_dir() else None
        if unreadable is not None or isinstance(err, SafetensorError):
            raise ValueError(f"{flag} {name_or_path}: the weights file {unreadable or '(*.safetensors)'} cannot be "
                             f"read ({_first_line(err)}); it is corrupted: save or download it again") from err
        if isinstance(err, OSError):
            raise ValueError(f"{flag} {name_or_path} cannot be loaded: {_first_line(err)}") from err
        raise


def _unreadable_weights(folder: Path) -> Path | None:
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(file, framework="pt"):
                pass
        except (SafetensorError, OSError):
            return file
    return None


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
