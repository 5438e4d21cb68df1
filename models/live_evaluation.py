"""Checks of a trained live model: robustness to audio / vision, forward-pass time, the ridge floor
of its text features, and a load-and-predict check of a checkpoint as the engine reads it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from . import training
from .augmentation import AUDIO_MAX_FRAMES, AUDIO_WINDOW, VISION_MAX_FRAMES, AVAugment, AVPool, live_dims
from .base import FusionInputs, ModalityDims

# --------------------------------------------------------------------------- robustness + speed
#: Robustness conditions: (audio, vision) shown at evaluation; "pool" = speech / face windows as
#: trained (binned to the engine's max frames), "pool300" = the same with 300 un-binned audio frames
#: (an engine configured with max_audio_frames = 300), "noise" = Gaussian noise.
AV_CONDITIONS = {
    "audio_only": dict(audio=True, vision=False, noise_prob=0.0),
    "vision_only": dict(audio=False, vision=True, noise_prob=0.0),
    "pool": dict(audio=True, vision=True, noise_prob=0.0),
    "pool300": dict(audio=True, vision=True, noise_prob=0.0, audio_frames=AUDIO_WINDOW),
    "noise": dict(audio=True, vision=True, noise_prob=1.0),
}


def _with_av(
    split: data_mod.SplitData, pool: AVPool, dims: ModalityDims, condition: str, seed: int
) -> data_mod.SplitData:
    """A copy of ``split`` with audio / vision sequences per :data:`AV_CONDITIONS`."""
    c = AV_CONDITIONS[condition]
    g = torch.Generator().manual_seed(seed)
    aug = AVAugment(pool, dims, noise_prob=c["noise_prob"], audio_frames=c.get("audio_frames", AUDIO_MAX_FRAMES))
    n = len(split)
    a = [aug.sequence("audio", g) if c["audio"] else np.zeros((0, dims.audio), np.float32) for _ in range(n)]
    v = [aug.sequence("vision", g) if c["vision"] else np.zeros((0, dims.vision), np.float32) for _ in range(n)]
    return data_mod.SplitData(
        split.text,
        data_mod.SequenceStore.from_list(a, dims.audio),
        data_mod.SequenceStore.from_list(v, dims.vision),
        split.labels,
        split.ids,
        split.video_ids,
        split.raw_text,
    )


def av_robustness(
    model,
    splits: data_mod.DatasetSplits,
    pool: AVPool,
    seed: int = 123,
    conditions: Sequence[str] = tuple(AV_CONDITIONS),
) -> dict[str, Any]:
    """Metrics with audio / vision absent vs present (:data:`AV_CONDITIONS`), and the score shift."""
    res: dict[str, Any] = {}
    for split_name in ("valid", "test"):
        base_split = splits.split(split_name)
        base = training.predict(model, base_split)
        res[split_name] = {"absent": training.regression_metrics("mosi", base, base_split.labels)}
        for cond in conditions:
            sp = _with_av(base_split, pool, splits.dims, cond, seed)
            p = training.predict(model, sp, batch_size=64)
            m = training.regression_metrics("mosi", p, sp.labels)
            m["mean_abs_shift"] = float(np.mean(np.abs(p - base)))
            m["max_abs_shift"] = float(np.max(np.abs(p - base)))
            m["sign_flips"] = float(np.mean(np.sign(p) != np.sign(base)))
            res[split_name][cond] = m
    return res


def time_forward(model, dims: ModalityDims, threads: int = 1, repeats: int = 200) -> dict[str, float]:
    """Per-window forward cost (batch 1): 12 text tokens + the engine's max audio (or 300) and face frames.

    ``threads`` = 1 is the engine's default for the fusion stage (``[fusion] threads``); with one
    thread, the thread's CPU time is the latency of an otherwise idle core."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    model.eval()
    cases = {
        "text_only": (12, 0, 0),
        "full_window": (12, AUDIO_MAX_FRAMES, VISION_MAX_FRAMES),
        "full_window_300": (12, AUDIO_WINDOW, VISION_MAX_FRAMES),
    }
    out: dict[str, float] = {"threads": threads}
    with torch.inference_mode():
        for name, (lt, la, lv) in cases.items():
            x = FusionInputs(
                torch.randn(1, lt, dims.text),
                torch.randn(1, max(la, 1), dims.audio),
                torch.randn(1, max(lv, 1), dims.vision),
                torch.ones(1, lt, dtype=torch.bool),
                torch.full((1, max(la, 1)), la > 0),
                torch.full((1, max(lv, 1)), lv > 0),
            )
            for _ in range(20):
                model(x)
            ts = []
            for _ in range(repeats):  # thread CPU time: robust to other processes on a busy machine
                t = time.thread_time()
                model(x)
                ts.append(time.thread_time() - t)
            out[f"{name}_median_ms"] = float(np.median(ts) * 1e3)
            out[f"{name}_p90_ms"] = float(np.percentile(ts, 90) * 1e3)
    torch.set_num_threads(old)
    return out


RIDGE_ALPHAS = (0.1, 0.3, 1, 3, 10, 30, 100)


def ridge_floor(splits: data_mod.DatasetSplits) -> dict[str, Any]:
    """Reference: the encoder's pooled sentence vector + ridge, alpha (of ``RIDGE_ALPHAS``) chosen by
    valid MAE. Also the mosi_text bench's ``ridge`` row."""
    from sklearn.linear_model import Ridge

    best = None
    for alpha in RIDGE_ALPHAS:
        r = Ridge(alpha=alpha).fit(splits.train.pooled, splits.train.labels)
        mae = float(np.mean(np.abs(r.predict(splits.valid.pooled) - splits.valid.labels)))
        if best is None or mae < best[0]:
            best = (mae, alpha, r)
    _, alpha, r = best
    return {
        "alpha": alpha,
        "valid": training.regression_metrics("mosi", r.predict(splits.valid.pooled), splits.valid.labels),
        "test": training.regression_metrics("mosi", r.predict(splits.test.pooled), splits.test.labels),
    }


def check_live_model(path: Path, encoder=None) -> dict[str, Any]:
    """Load ``path`` through the engine's :class:`LiveModel` and predict a few windows."""
    from ..engine.config import FusionConfig
    from ..engine.windowing import Window
    from ..payloads import Word
    from .live import LiveModel

    if encoder is None:
        from ..perception.text import TextEncoder

        encoder = TextEncoder()
    dims = live_dims(encoder.dim)
    # eager backend: this checks loading, normalisation and scores, not the engine's backends
    # (their ONNX export thread also aborts the interpreter at exit when it is still running)
    cfg = FusionConfig(checkpoint=str(path))
    if hasattr(cfg, "backend"):
        cfg.backend = "eager"
    lm = LiveModel(cfg, encoder, dims.vision, dims.audio)
    rng = np.random.default_rng(0)

    def window(text: str, ta: int, tv: int) -> Window:
        words = [Word(w, 0.0, 0.1) for w in text.split()]
        return Window(
            0.0,
            3.0,
            rng.normal(0, 0.1, (tv, dims.vision)).astype(np.float32),
            np.ones(tv, bool),
            rng.normal(0, 1, (ta, dims.audio)).astype(np.float32),
            words,
            context=words,
        )

    out = {"placeholder": lm.placeholder, "name": lm.name}
    for text in ("this movie was absolutely wonderful", "it was boring and a total waste of time", ""):
        p = lm.predict(window(text, 300, 45))
        out[text or "<empty>"] = {"score": round(p.score, 3), "label": p.label, "model_ms": round(p.model_ms, 2)}
    return out
