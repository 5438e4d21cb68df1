"""One training loop for every zoo model (MMSA protocol).

>>> from sentistream.models import data, training
>>> ds = data.load_mosi_npz("../shared/data/mosi/mosi_utterances.npz")
>>> res = training.train_model("almt", ds, training.TrainConfig.for_model("almt", epochs=30), seed=0)
>>> res.valid["mae"], res.test["acc2_non0"]
>>> agg = training.train_seeds("almt", ds, seeds=(0, 1, 2, 3, 4))   # mean ± std over seeds
>>> agg.summary()["test"]                                           # {"mae": ..., "mae_std": ...}

What the loop does, per step: optional batch ``augment`` hook, modality dropout (each sample's audio /
vision is masked out with probability ``audio_dropout`` / ``vision_dropout``; text with
``text_dropout``), ``task_loss(score, y, loss) + model.auxiliary_loss(...)``, backward, gradient-norm
clipping (``grad_clip``; 0 = off), optimizer step (``adamw`` default, or ``adam``), scheduler step
(``warmup_cosine`` default: linear warm-up over ``warmup_ratio`` of all steps, then cosine to
``min_lr_ratio * lr``; ``plateau``: ReduceLROnPlateau on the validation criterion, per epoch, as in
MulT; ``constant``).

**Model selection and early stopping use the validation split only.** The criterion is
``select_metric``: ``"mae"`` by default (lower is better), i.e. MMSA's ``KeyEval = "Loss"`` for
MOSI/MOSEI/SIMS with an L1 loss; ``"acc2_non0"``, ``"acc2_has0"``, ``"f1_non0"``, ``"corr"``
(higher is better) or ``"loss"`` (validation task loss) may be chosen instead. Training stops after
``patience`` epochs without improvement (MMSA ``early_stop = 8``); the best epoch's weights are
restored, and only then is the test split evaluated, once.

Two-stage models (KuDA, which has ``set_stage``): stage 1 runs ``stage1_epochs`` epochs with
``set_stage(1)`` (unimodal pre-training, selected by the lowest *validation auxiliary loss*), then
stage 2 (``set_stage(2)``) runs the normal loop with its own fresh optimizer and schedule.

Determinism: :func:`seed_everything` seeds Python, numpy and torch before the model is built and
before training; batch order comes from ``numpy.random.default_rng(seed)`` and dropout /
modality-dropout draws from torch's seeded generator, so the same seed on the same machine and
thread count reproduces the same numbers.

Hyper-parameters: :meth:`TrainConfig.for_model` reads the model's ``[train]`` TOML table
(``configs/models/<name>.toml``) and applies keyword overrides; keys the dataclass does not know are
kept in ``extra`` (and reported by ``TrainConfig.unknown_keys``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import registry
from .base import FusionInputs, FusionModel, task_loss
from .data import DatasetSplits, SplitData, concat_splits
from .metrics import regression_metrics

log = logging.getLogger("sentistream.training")

HIGHER_IS_BETTER = {"acc2_non0", "acc2_has0", "f1_non0", "f1_has0", "acc7", "acc5", "corr", "acc2", "acc3", "f1"}
LOWER_IS_BETTER = {"mae", "loss"}

#: ``augment(inputs, labels, generator)`` -> inputs, or (inputs, labels) to change the targets too.
Augment = Callable[[FusionInputs, Tensor, torch.Generator], Any]


@dataclass
class TrainConfig:
    """Training hyper-parameters (the ``[train]`` TOML table + overrides)."""

    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adamw | adam
    scheduler: str = "warmup_cosine"  # warmup_cosine | plateau | constant
    warmup_ratio: float = 0.1  # of all optimisation steps
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    grad_clip: float = 1.0  # max gradient L2 norm; 0 = no clipping
    loss: str = "l1"  # l1 (MMSA) | mse | smooth_l1
    select_metric: str = "mae"  # validation criterion for early stopping / model selection
    patience: int = 8  # epochs without validation improvement before stopping; 0 = never stop
    plateau_patience: int = 4  # scheduler "plateau": epochs without improvement before LR x 0.1
    stage1_epochs: int = 0  # two-stage models only (KuDA)
    stage1_lr: float | None = None  # default: lr
    text_dropout: float = 0.0  # per-sample probability of masking the modality during training
    audio_dropout: float = 0.0
    vision_dropout: float = 0.0
    max_len: int | None = None  # truncate longer sequences (first max_len steps)
    eval_batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    num_threads: int | None = None  # torch.set_num_threads for the run; None = leave as is
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A plateau decay that waits as long as early stopping can never fire (MulT's reference
        # code waits 20 epochs; MMSA stops after 8).
        if self.scheduler == "plateau" and self.patience and self.plateau_patience >= self.patience:
            raise ValueError(
                f"train.plateau_patience ({self.plateau_patience}) must be below train.patience "
                f"({self.patience}): the LR would never decay before early stopping ends the run"
            )

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)} - {"extra"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {k: v for k, v in d.items() if k in cls.field_names()}
        extra = {k: v for k, v in d.items() if k not in cls.field_names() and k != "extra"}
        extra.update(d.get("extra") or {})
        return cls(**known, extra=extra)

    @classmethod
    def for_model(cls, name: str, **overrides: Any) -> TrainConfig:
        """The model's ``[train]`` table with ``overrides`` (``None`` values are ignored)."""
        table = registry.load_train_config(name)
        table.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(table)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def unknown_keys(self) -> list[str]:
        return sorted(self.extra)


def load_run_config(name: str, path: str | None = None, **overrides: Any) -> tuple[dict[str, Any], TrainConfig]:
    """(constructor hparams, TrainConfig) for ``name``: its ``configs/models/<name>.toml``, then the
    user's TOML ``path`` on top (top-level keys = hyper-parameters, ``[train]`` = training keys),
    then ``overrides`` (training keys; ``None`` values ignored). For ``sentistream train --config``."""
    import tomllib

    hparams = registry.load_hparams(name)
    table = registry.load_train_config(name)
    if path:
        with open(path, "rb") as fh:
            user = tomllib.load(fh)
        hparams.update({k: v for k, v in user.items() if not isinstance(v, dict)})
        table.update(user.get("train", {}))
    table.update({k: v for k, v in overrides.items() if v is not None})
    return hparams, TrainConfig.from_dict(table)


@dataclass
class TrainResult:
    model: FusionModel
    valid: dict[str, float]  # metrics of the selected model on the validation split
    test: dict[str, float]  # ... and on the test split (evaluated once, after selection)
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]
    config: TrainConfig
    seed: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "seconds": round(self.seconds, 1),
            "valid": self.valid,
            "test": self.test,
        }


@dataclass
class SeedsResult:
    results: list[TrainResult]

    def _agg(self, split: str) -> dict[str, float]:
        keys = list(getattr(self.results[0], split))
        out: dict[str, float] = {}
        for k in keys:
            vals = np.array([getattr(r, split)[k] for r in self.results], dtype=np.float64)
            out[k] = float(np.mean(vals))
            out[k + "_std"] = float(np.std(vals))  # population std (ddof=0), as MMSA's run.py
        return out

    @property
    def valid(self) -> dict[str, float]:
        return self._agg("valid")

    @property
    def test(self) -> dict[str, float]:
        return self._agg("test")

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.results]

    def summary(self) -> dict[str, Any]:
        return {
            "seeds": self.seeds,
            "valid": self.valid,
            "test": self.test,
            "per_seed": [r.summary() for r in self.results],
        }


# --------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def metrics_name(data: DatasetSplits) -> str:
    return "sims" if data.kind == "sims" else "mosi"


def _is_better(metric: str, new: float, best: float | None) -> bool:
    if best is None:
        return bool(np.isfinite(new))
    if not np.isfinite(new):
        return False
    if metric in LOWER_IS_BETTER:
        return new < best
    return new > best


def best_of_seeds(results: Sequence[TrainResult], metric: str) -> TrainResult:
    """The run whose validation ``metric`` is best: lowest for a loss or an error (LOWER_IS_BETTER),
    highest otherwise; a run without a finite value of it is never chosen over one with."""
    _check_metric(metric)
    if not results:
        raise ValueError("no training runs to choose from")
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0

    def key(r: TrainResult) -> float:
        value = r.valid.get(metric)
        return sign * float(value) if value is not None and np.isfinite(value) else float("inf")

    return min(results, key=key)


def _check_metric(metric: str) -> None:
    if metric not in HIGHER_IS_BETTER | LOWER_IS_BETTER:
        raise ValueError(
            f"unknown select_metric {metric!r}; one of {', '.join(sorted(HIGHER_IS_BETTER | LOWER_IS_BETTER))}"
        )


def modality_dropout(inputs: FusionInputs, probs: Sequence[float], generator: torch.Generator) -> FusionInputs:
    """Mask whole modalities per sample: ``probs`` = (text, audio, vision) drop probabilities.

    A dropped modality gets an all-``False`` mask row and zeroed features (what the live engine
    sends when a modality is missing).
    """
    if not any(p > 0 for p in probs):
        return inputs
    b = inputs.batch_size
    seqs, masks = list(inputs.sequences()), list(inputs.masks())
    for i, p in enumerate(probs):
        if p <= 0:
            continue
        keep = torch.rand(b, generator=generator) >= p
        keep = keep.to(masks[i].device)
        masks[i] = masks[i] & keep.unsqueeze(1)
        seqs[i] = seqs[i] * keep.to(seqs[i].dtype).view(b, 1, 1)
    return FusionInputs(seqs[0], seqs[1], seqs[2], masks[0], masks[1], masks[2], inputs.labels)


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine down to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _optimizer(params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    name = cfg.optimizer.lower()
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (adamw, adam)")


@torch.inference_mode()
def predict(
    model: FusionModel,
    split: SplitData,
    batch_size: int = 256,
    max_len: int | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Scores [N] (unclipped) in eval mode; labels are not shown to the model."""
    was_training = model.training
    model.eval()
    out = []
    for inputs, _ in split.batches(batch_size, shuffle=False, max_len=max_len):
        inputs.labels = None
        out.append(model(inputs.to(device)).score.reshape(-1).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def evaluate(
    model: FusionModel,
    split: SplitData,
    kind: str = "mosi",
    batch_size: int = 256,
    max_len: int | None = None,
    device: str | torch.device = "cpu",
    loss: str = "l1",
) -> dict[str, float]:
    """MMSA metrics (``models.metrics.regression_metrics``) plus ``loss`` (the task loss)."""
    pred = predict(model, split, batch_size, max_len, device)
    m = regression_metrics(kind, pred, split.labels)
    m["loss"] = float(task_loss(torch.from_numpy(pred), torch.from_numpy(split.labels), loss))
    return m


@torch.inference_mode()
def _valid_aux_loss(model: FusionModel, split: SplitData, cfg: TrainConfig) -> float:
    """Mean auxiliary loss on the validation split (stage-1 selection); labels given, eval mode."""
    model.eval()
    tot, n = 0.0, 0
    for inputs, y in split.batches(cfg.eval_batch_size, max_len=cfg.max_len):
        inputs = inputs.to(cfg.device)
        y = y.to(cfg.device)
        out = model(inputs)
        tot += float(model.auxiliary_loss(inputs, out, y)) * len(y)
        n += len(y)
    model.train()
    return tot / max(n, 1)


def _state(model: FusionModel) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- the loop
def _run_stage(
    model: FusionModel,
    data: DatasetSplits,
    cfg: TrainConfig,
    epochs: int,
    lr: float,
    rng: np.random.Generator,
    gen: torch.Generator,
    augment: Augment | None,
    select: str,
    desc: str,
    stop_after: int | None = None,
) -> tuple[int, int, list[dict[str, float]]]:
    """Train for up to ``epochs``; restore the best validation state. Returns (best, run, history).

    ``stop_after``: a refit. The LR schedule still spans ``epochs``, but training stops after
    epoch ``stop_after`` and keeps those final weights; the validation split is not read."""
    from tqdm.auto import tqdm

    kind = metrics_name(data)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(params, cfg, lr)
    steps_per_epoch = data.train.num_batches(cfg.batch_size)
    total = max(1, epochs * steps_per_epoch)
    sched_name = cfg.scheduler.lower()
    if sched_name in ("warmup_cosine", "cosine"):
        warm = int(round(cfg.warmup_ratio * total)) if cfg.warmup_ratio < 1 else int(cfg.warmup_ratio)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warm, cfg.min_lr_ratio))
        per_step = True
    elif sched_name == "plateau":
        mode = "min" if select in LOWER_IS_BETTER or select == "aux" else "max"
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.1, patience=cfg.plateau_patience)
        per_step = False
    elif sched_name in ("constant", "none", ""):
        sched, per_step = None, False
    else:
        raise ValueError(f"unknown scheduler {cfg.scheduler!r} (warmup_cosine, plateau, constant)")

    probs = (cfg.text_dropout, cfg.audio_dropout, cfg.vision_dropout)
    best_val: float | None = None
    best_state = _state(model)
    best_epoch, bad, history = 0, 0, []
    last = epochs if stop_after is None else max(0, min(int(stop_after), epochs))
    bar = tqdm(range(1, last + 1), desc=desc, unit="ep", disable=not cfg.progress, leave=False)
    epoch = 0
    for epoch in bar:
        model.train()
        t0, tot, n = time.perf_counter(), 0.0, 0
        for inputs, y in data.train.batches(cfg.batch_size, shuffle=True, rng=rng, max_len=cfg.max_len):
            if augment is not None:
                inputs = augment(inputs, y, gen)
                if isinstance(inputs, tuple):  # an augment may also change the targets
                    inputs, y = inputs
            inputs = modality_dropout(inputs, probs, gen)
            inputs, y = inputs.to(cfg.device), y.to(cfg.device)
            inputs.labels = y
            out = model(inputs)
            loss = task_loss(out.score, y, cfg.loss) + model.auxiliary_loss(inputs, out, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{model.name}: non-finite loss at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip and cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            if sched is not None and per_step:
                sched.step()
            tot += float(loss.detach()) * len(y)
            n += len(y)
        rec: dict[str, float] = {
            "epoch": epoch,
            "train_loss": tot / max(n, 1),
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
        }
        if stop_after is not None:
            history.append(rec)
            bar.set_postfix(loss=f"{rec['train_loss']:.3f}")
            continue
        if select == "aux":
            val = _valid_aux_loss(model, data.valid, cfg)
            rec["valid_aux"] = val
            better = best_val is None or val < best_val
        else:
            vm = evaluate(model, data.valid, kind, cfg.eval_batch_size, cfg.max_len, cfg.device, cfg.loss)
            rec.update({f"valid_{k}": v for k, v in vm.items()})
            val = vm[select]
            better = _is_better(select, val, best_val)
        if sched is not None and not per_step:
            sched.step(val)
        history.append(rec)
        if better:
            best_val, best_state, best_epoch, bad = val, _state(model), epoch, 0
        else:
            bad += 1
        bar.set_postfix(
            loss=f"{rec['train_loss']:.3f}", val=f"{val:.4f}", best=f"{best_val:.4f}" if best_val is not None else "-"
        )
        log.debug("%s epoch %d %s", desc, epoch, rec)
        if cfg.patience and bad >= cfg.patience:
            break
    bar.close()
    if stop_after is not None:
        return epoch, epoch, history
    model.load_state_dict(best_state)
    return best_epoch, epoch, history


def train(
    model: FusionModel,
    data: DatasetSplits,
    config: TrainConfig | None = None,
    *,
    augment: Augment | None = None,
    seed: int | None = None,
    stop_after: int | None = None,
    stage1_stop_after: int | None = None,
) -> TrainResult:
    """Train ``model`` on ``data.train``, select on ``data.valid``, report valid + test metrics.

    ``augment(inputs, labels, generator) -> inputs`` (or ``(inputs, labels)``) is applied to every
    training batch before modality dropout (the live trainer uses it to show the model audio /
    vision inputs).
    Pass ``seed`` (default ``config.seed``); the model should already have been built after
    :func:`seed_everything` with the same seed (:func:`train_model` does both).
    ``stop_after`` / ``stage1_stop_after``: no selection; stop after that epoch of (stage 2 / stage 1)
    and keep the final weights (:func:`refit_model`).
    """
    cfg = config or TrainConfig.for_model(model.name)
    seed = cfg.seed if seed is None else seed
    _check_metric(cfg.select_metric)
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.to(cfg.device)
    history: list[dict[str, float]] = []
    has_stages = callable(getattr(model, "set_stage", None))
    if has_stages and cfg.stage1_epochs > 0:
        model.set_stage(1)
        _, _, h1 = _run_stage(
            model,
            data,
            cfg,
            cfg.stage1_epochs,
            cfg.stage1_lr or cfg.lr,
            rng,
            gen,
            augment,
            "aux",
            f"{model.name} s{seed} stage 1",
            stop_after=stage1_stop_after,
        )
        history += [{**h, "stage": 1} for h in h1]
        model.set_stage(2)
    best_epoch, epochs_run, h2 = _run_stage(
        model,
        data,
        cfg,
        cfg.epochs,
        cfg.lr,
        rng,
        gen,
        augment,
        cfg.select_metric,
        f"{model.name} s{seed}",
        stop_after=stop_after,
    )
    history += [{**h, "stage": 2 if has_stages and cfg.stage1_epochs > 0 else 0} for h in h2]
    model.eval()
    kind = metrics_name(data)
    valid = evaluate(model, data.valid, kind, cfg.eval_batch_size, cfg.max_len, cfg.device, cfg.loss)
    test = evaluate(model, data.test, kind, cfg.eval_batch_size, cfg.max_len, cfg.device, cfg.loss)
    return TrainResult(model, valid, test, best_epoch, epochs_run, history, cfg, seed, time.perf_counter() - t0)


def train_model(
    name: str,
    data: DatasetSplits,
    config: TrainConfig | None = None,
    seed: int | None = None,
    hparams: dict[str, Any] | None = None,
    *,
    augment: Augment | None = None,
    build_fn: Callable[[], FusionModel] | None = None,
) -> TrainResult:
    """Seed, build ``name`` from its TOML (``hparams`` on top) at ``data.dims``, and :func:`train`."""
    cfg = config or TrainConfig.for_model(name)
    seed = cfg.seed if seed is None else seed
    seed_everything(seed)
    model = build_fn() if build_fn is not None else registry.build_from_config(name, data.dims, **(hparams or {}))
    return train(model, data, cfg, augment=augment, seed=seed)


def refit_model(
    name: str,
    data: DatasetSplits,
    selected: TrainResult,
    hparams: dict[str, Any] | None = None,
    *,
    augment: Augment | None = None,
) -> TrainResult:
    """Retrain ``name`` on train + valid for the epochs ``selected`` (a run early-stopped on valid)
    chose, with the same seed and configuration, then evaluate the test split once.

    Nothing is selected here: the LR schedule spans the configured epochs, training stops after
    ``selected.best_epoch`` (KuDA: stage 1 after its own best stage-1 epoch) and keeps those weights.
    The returned ``valid`` metrics are in-sample (valid was trained on); report the selected run's.
    A ``plateau`` schedule keeps its LR here (it steps on the validation criterion)."""
    cfg, seed = selected.config, selected.seed
    full = dataclasses.replace(data, train=concat_splits(data.train, data.valid))
    stop1 = None
    if cfg.stage1_epochs > 0:
        s1 = [h for h in selected.history if h.get("stage") == 1 and "valid_aux" in h]
        stop1 = int(min(s1, key=lambda h: h["valid_aux"])["epoch"]) if s1 else cfg.stage1_epochs
    seed_everything(seed)
    model = registry.build_from_config(name, data.dims, **(hparams or {}))
    return train(
        model, full, cfg, augment=augment, seed=seed, stop_after=max(1, selected.best_epoch), stage1_stop_after=stop1
    )


def train_seeds(
    name: str,
    data: DatasetSplits,
    config: TrainConfig | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    hparams: dict[str, Any] | None = None,
    *,
    augment: Augment | None = None,
) -> SeedsResult:
    """:func:`train_model` once per seed; ``.valid`` / ``.test`` give mean and ``*_std``."""
    return SeedsResult([train_model(name, data, config, s, hparams, augment=augment) for s in seeds])
