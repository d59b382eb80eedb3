"""Validation shared by the family's configs: each failure names the field, the value and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Iterable


def check_choice(field: str, value: object, allowed: Iterable[object]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"`{field}`={value!r} is not supported; allowed values: {', '.join(map(repr, allowed))}.")


def check_bool(field: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"`{field}`={value!r} must be True or False.")


def check_int(field: str, value: object, minimum: int | None = None, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{field}`={value!r} must be an integer.")
    check_number(field, value, minimum, maximum)


def check_number(
    field: str,
    value: object,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
    allow_infinite: bool = False,
) -> None:
    """A finite number with minimum <= value <= maximum (strict: minimum < value).

    nan is always refused (every comparison with it is False, so a range alone would let it through); +-inf only
    where ``allow_infinite`` says the field gives infinity a meaning, and then still inside the range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{field}`={value!r} must be a number.")
    if math.isnan(value) or (math.isinf(value) and not allow_infinite):
        allowed = "a number (inf allowed)" if allow_infinite else "a finite number"
        raise ValueError(f"`{field}`={value!r} is not allowed; it must be {allowed}.")
    too_small = minimum is not None and (value <= minimum if strict else value < minimum)
    if too_small or (maximum is not None and value > maximum):
        low = "" if minimum is None else f"{'>' if strict else '>='} {minimum}"
        high = "" if maximum is None else f"<= {maximum}"
        raise ValueError(f"`{field}`={value!r} is out of range; it must be {' and '.join(filter(None, [low, high]))}.")


def check_divides(field: str, value: int, divisor_field: str, divisor: int) -> None:
    if value % divisor != 0:
        raise ValueError(f"`{field}`={value} must be divisible by `{divisor_field}`={divisor}.")


class ValidatedConfig:
    """Mixin of the family's configs: `validate()` runs the config's own `_check_and_derive()`, then transformers'."""

    def validate(self) -> None:
        """Check every field, recompute the derived ones, then run transformers' own config checks.

        Raises a `ValueError` naming the field, its value and what is allowed. Idempotent and cheap (no tensors):
        construction runs the same checks, and the models run this when they are built, so a field changed after
        construction cannot build a broken model.
        """
        self._check_and_derive()
        super().validate()
