"""Importing HazyResearch/safari's own code from a checkout, for the scripts that run it beside ours.

safari's packages import libraries at load time that the code these scripts run never calls (its vision and
text datasets import torchvision and torchtext, its trainer wandb; its utilities Lightning, Hydra, OmegaConf and
rich). ``stand_in(names)`` answers imports of those with empty modules, whose every attribute is a harmless
callable, except for what the runs do use: torchvision's ``StochasticDepth`` (which safari's ``simple_lm`` builds
with probability 0: the identity), Hydra's ``utils.get_method`` (by which safari's ``instantiate`` finds a class
from its dotted path) and ``wandb.run`` (None: no run). Nothing of safari's is copied into this project.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import pydoc
import subprocess
import sys
import types
from pathlib import Path

from torch import nn


def stochastic_depth(p: float, mode: str) -> nn.Module:
    """torchvision's StochasticDepth at p = 0, the only value safari's synthetic models use."""
    if p != 0:
        raise ValueError(f"only StochasticDepth(p=0) is stood in for, got p={p}")
    return nn.Identity()


class _Anything:
    """Whatever import-time code asks of a stood-in module: a callable (a decorator returns its function), a base
    class, attributes that are stand-ins again, one per dotted name (so that e.g. the members of a stood-in enum
    are distinct dictionary keys)."""

    def __init__(self, path: str):
        self._path = path

    def __call__(self, *args, **kwargs):
        return args[0] if len(args) == 1 and not kwargs and callable(args[0]) else self

    def __getattr__(self, name: str):
        return _anything(f"{self._path}.{name}")

    def __mro_entries__(self, bases):
        return (object,)

    def __repr__(self) -> str:
        return f"<stand-in for {self._path}>"


_STAND_INS: dict[str, _Anything] = {}


def _anything(path: str) -> _Anything:
    return _STAND_INS.setdefault(path, _Anything(path))


class _StoodIn(types.ModuleType):
    __path__: list[str] = []

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _anything(f"{self.__name__}.{name}")


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, names: tuple[str, ...]):
        self.names = names

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StoodIn(spec.name)

    def exec_module(self, module):
        if module.__name__ == "hydra":
            module.utils = types.SimpleNamespace(get_method=pydoc.locate)
        elif module.__name__ == "torchvision":
            module.ops = types.SimpleNamespace(StochasticDepth=stochastic_depth)
        elif module.__name__ == "torchvision.ops":
            module.StochasticDepth = stochastic_depth
        elif module.__name__ == "wandb":
            module.run = None


def stand_in(names: tuple[str, ...]) -> None:
    """Answer imports of these top-level packages (and their submodules) with stand-ins from now on."""
    sys.meta_path.insert(0, _StandIns(names))


def check_checkout(safari_dir: Path) -> Path:
    """The checkout's root, made importable (``src.*``); exits with a message if it is not one."""
    safari_dir = safari_dir.resolve()
    if not (safari_dir / "src" / "models" / "sequence" / "h3.py").is_file():
        raise SystemExit(f"--safari_dir {safari_dir} is not a checkout of HazyResearch/safari "
                         "(no src/models/sequence/h3.py)")
    for module in ("einops", "opt_einsum"):
        try:
            __import__(module)
        except ImportError:
            raise SystemExit(f"safari's model code needs {module}: pip install einops opt_einsum") from None
    sys.path.insert(0, str(safari_dir))
    return safari_dir


def checkout_commit(safari_dir: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(safari_dir), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
