"""What the installed transformers release expects of a generation cache: its name, and who counts its tokens.

transformers 5.24 renamed the cache keyword of `forward()` / `prepare_inputs_for_generation()` and the cache field of
model outputs from `past_key_values` to `cache` (and deprecated the old names with `deprecate_kwarg`). The family
supports releases on both sides of the rename, so its models take `cache`, accept `past_key_values` the way the
installed release does (a FutureWarning where the release itself has renamed it, a silent rename on older releases
whose `generate()` still passes the old name), and fill whichever output field the release declares.

transformers 5.25 made a linear-attention cache layer count the tokens appended to its first conv state, so that
`cache.get_seq_length()` (which `generate()` asks when it continues from a cache) answers for H3 and Mamba layers too;
older releases have no such count, and a cache of only linear-attention layers refuses the question.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from transformers.cache_utils import LinearAttentionCacheLayerMixin
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg

CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} else "past_key_values"
"""The cache field of model outputs, and the cache keyword `generate()` passes, in the installed release."""

LINEAR_LAYERS_COUNT_TOKENS = hasattr(LinearAttentionCacheLayerMixin, "increase_count")
"""Whether a linear-attention cache layer counts its tokens itself (transformers >= 5.25)."""

_Function = TypeVar("_Function", bound=Callable[..., Any])


def accepts_past_key_values(function: _Function) -> _Function:
    """Accept the pre-5.24 keyword `past_key_values` (and Mamba's `cache_params`) for `cache`: with a FutureWarning
    where transformers has renamed it (as its own models do), silently where the installed transformers still uses
    the old name itself."""
    # deprecate_kwarg stays silent once the installed release is at or past `version`.
    version = "5.40.0" if CACHE_FIELD == "cache" else "5.0.0"
    wrapped = deprecate_kwarg("past_key_values", version, new_name="cache")(function)
    # transformers' own outputs and models also accept Mamba's old name; without this, `cache_params=` would fall
    # into **kwargs and the model would run without its cache, silently.
    wrapped = deprecate_kwarg("cache_params", version, new_name="cache")(wrapped)
    # generate() checks its keyword arguments against this signature: list the old name too, so that
    # `generate(..., past_key_values=cache)` is accepted on releases that still spell it so.
    signature = inspect.signature(function)
    if "past_key_values" not in signature.parameters:
        parameters = list(signature.parameters.values())
        at = next((i for i, p in enumerate(parameters) if p.kind is p.VAR_KEYWORD), len(parameters))
        legacy = inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None)
        wrapped.__signature__ = signature.replace(parameters=[*parameters[:at], legacy, *parameters[at:]])
    return wrapped


def cache_output(cache: Any) -> dict[str, Any]:
    """Keyword for an output dataclass: `{field: cache}` under the installed release's field name."""
    return {CACHE_FIELD: cache}


def output_cache(outputs: Any) -> Any:
    """The cache of a model output, whichever name the installed release gives it."""
    return getattr(outputs, CACHE_FIELD)
