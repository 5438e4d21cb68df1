"""Model registry, TOML hyper-parameters and safetensors checkpoints.

>>> from sentistream.models import registry
>>> registry.available()
['almt', 'kuda', 'lmf', 'mldfa', 'msfn', 'mult', 'tfn']
>>> model = registry.build("almt", DEFAULT_DIMS, **registry.load_hparams("almt"))
>>> registry.save_checkpoint(model, "almt.safetensors", {"dataset": "mosi"})
>>> model2 = registry.load_checkpoint("almt.safetensors")   # eval mode, identical weights

Checkpoints are plain safetensors files (no pickle). Their string metadata holds ``format``,
``model`` (registry name), ``dims``, ``hparams`` and ``meta`` (the last three as JSON strings).
"""

from __future__ import annotations

import importlib
import inspect
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_model, save_model

from .base import FusionModel, ModalityDims

CHECKPOINT_FORMAT = "sentistream.fusion/1"
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "models"

# Modules holding the built-in models; imported lazily so `registry` has no import cycle.
_BUILTIN_MODULES = ("almt", "kuda", "msfn", "mldfa", "tfn", "lmf", "mult")

_REGISTRY: dict[str, type[FusionModel]] = {}
_loaded = False


def register(name: str) -> Callable[[type[FusionModel]], type[FusionModel]]:
    """Class decorator: register a :class:`FusionModel` subclass under ``name`` (lower-case)."""
    key = name.lower()

    def deco(cls: type[FusionModel]) -> type[FusionModel]:
        if not (isinstance(cls, type) and issubclass(cls, FusionModel)):
            raise TypeError(f"@register({name!r}) expects a FusionModel subclass, got {cls!r}")
        other = _REGISTRY.get(key)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"model name {key!r} already registered by {other.__qualname__}")
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return deco


def _ensure_builtin() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{mod}")
    _loaded = True


def available() -> list[str]:
    """Sorted names of every registered model."""
    _ensure_builtin()
    return sorted(_REGISTRY)


def get_class(name: str) -> type[FusionModel]:
    _ensure_builtin()
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def default_hparams(name: str) -> dict[str, Any]:
    """The constructor's keyword defaults (what ``build`` uses for keys not given)."""
    sig = inspect.signature(get_class(name).__init__)
    return {
        k: p.default
        for k, p in sig.parameters.items()
        if k not in ("self", "dims") and p.default is not inspect.Parameter.empty
    }


def build(name: str, dims: ModalityDims, **hparams: Any) -> FusionModel:
    """Instantiate model ``name`` for ``dims``.

    Unknown name -> ``ValueError`` listing the available ones; unknown hyper-parameter ->
    ``TypeError`` naming the key. The effective hyper-parameters (defaults filled in) are stored in
    ``model.hparams``.
    """
    cls = get_class(name)
    defaults = default_hparams(name)
    unknown = sorted(set(hparams) - set(defaults))
    if unknown:
        raise TypeError(
            f"{cls.name}: unknown hyper-parameter(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(sorted(defaults))}"
        )
    if not isinstance(dims, ModalityDims):
        dims = ModalityDims(**dict(dims))
    effective = {**defaults, **hparams}
    model = cls(dims, **effective)
    model.hparams = _jsonable(effective)
    return model


# --------------------------------------------------------------------------- configs
def config_path(name: str) -> Path:
    return CONFIG_DIR / f"{str(name).lower()}.toml"


def load_config(name: str) -> dict[str, Any]:
    """The whole ``configs/models/<name>.toml`` (model keys plus the ``[train]`` table)."""
    path = config_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"no config for model {name!r} at {path}")
    with path.open("rb") as fh:
        return tomllib.load(fh)


def load_hparams(name: str) -> dict[str, Any]:
    """Constructor hyper-parameters: the top-level (non-table) keys of the model's TOML."""
    return {k: v for k, v in load_config(name).items() if not isinstance(v, dict)}


def load_train_config(name: str) -> dict[str, Any]:
    """The ``[train]`` table (lr, batch_size, weight_decay, epochs, loss, ...)."""
    return dict(load_config(name).get("train", {}))


def build_from_config(name: str, dims: ModalityDims, **overrides: Any) -> FusionModel:
    """``build(name, dims, **load_hparams(name))`` with ``overrides`` on top."""
    return build(name, dims, **{**load_hparams(name), **overrides})


# --------------------------------------------------------------------------- checkpoints
def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def save_checkpoint(model: FusionModel, path: str | Path, meta: dict | None = None) -> Path:
    """Write ``model``'s weights and identity to a safetensors file (shared tensors de-duplicated)."""
    if not model.name or model.name not in _REGISTRY:
        raise ValueError(f"model class {type(model).__qualname__} is not registered")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hparams = model.hparams or {k: getattr(model, k) for k in default_hparams(model.name) if hasattr(model, k)}
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "model": model.name,
        "dims": json.dumps(model.dims.as_dict()),
        "hparams": json.dumps(_jsonable(hparams)),
        "meta": json.dumps(meta or {}, default=str),
    }
    save_model(model, str(path), metadata=metadata)
    return path


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """Parsed metadata: ``{"model": str, "dims": ModalityDims, "hparams": dict, "meta": dict}``."""
    with safe_open(str(path), framework="pt") as fh:
        md = fh.metadata() or {}
    if md.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a sentistream fusion checkpoint (format={md.get('format')!r})")
    return {
        "model": md["model"],
        "dims": ModalityDims(**json.loads(md["dims"])),
        "hparams": json.loads(md["hparams"]),
        "meta": json.loads(md.get("meta", "{}")),
    }


def load_checkpoint(path: str | Path, device: str | Any = "cpu") -> FusionModel:
    """Rebuild the model recorded in ``path`` and load its weights (strict).

    Returned in eval mode; ``model.checkpoint_meta`` holds the ``meta`` dict given at save time.
    """
    info = read_checkpoint_metadata(path)
    model = build(info["model"], info["dims"], **info["hparams"])
    missing, unexpected = load_model(model, str(path), strict=True, device=str(device))
    model.to(device)
    model.eval()
    model.checkpoint_meta = info["meta"]
    return model
