"""The live model: turns one fusion window into a sentiment prediction.

It owns the glue between the engine's windows and any zoo model: the text
encoder for the window's words, padding and masks, optional feature
normalisation stored in the checkpoint, and clipping to [-3, 3]. Without a
trained checkpoint it builds an untrained zoo model and says so in every
event (`placeholder: true`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .late_fusion import confidence, sentiment_label

log = logging.getLogger("sentistream.live_model")

SHIPPED_CHECKPOINT = "live_model.safetensors"
PLACEHOLDER_MODEL = "almt"


def shipped_checkpoint_path() -> Path:
    return Path(str(resources.files("sentistream.models").joinpath(SHIPPED_CHECKPOINT)))


@dataclass
class LivePrediction:
    score: float
    label: str
    confidence: float
    contributions: dict[str, float]
    model_ms: float
    text_ms: float
    text: str | None = None  # the transcript the model read (an earlier one with a background encoder)
    # The score with audio / vision masked out (occlusion, docs/protocol.md "Attributions"); equal
    # to ``score`` for an input the model does not read or the window does not have.
    occluded: dict[str, float] | None = None


class EagerForward:
    """Eager PyTorch: a live model's forward pass when no backend factory is given."""

    name = "eager"

    def __init__(self, live: LiveModel) -> None:
        self.model, self.device = live.model, live.device

    def __call__(self, inputs):
        with torch.inference_mode():
            return self.model(inputs.to(self.device))


#: Makes a live model's forward pass from the model (``live.model``, ``live.device``, ``live.dims``).
BackendFactory = Callable[["LiveModel"], Callable[[Any], Any]]


class LiveModel:
    def __init__(
        self, fusion_cfg, text_encoder, vision_dim: int, audio_dim: int, backend_factory: BackendFactory | None = None
    ) -> None:
        from .base import ModalityDims
        from .registry import build, load_checkpoint

        self.cfg = fusion_cfg
        self.text_encoder = text_encoder
        self.dims = ModalityDims(text=text_encoder.dim, audio=audio_dim, vision=vision_dim)
        self.norm: dict[str, np.ndarray] = {}
        name = fusion_cfg.model
        ckpt = fusion_cfg.checkpoint
        if name == "default" and not ckpt and shipped_checkpoint_path().is_file():
            ckpt = str(shipped_checkpoint_path())
        self.placeholder = False
        if ckpt:
            self.model, meta = _load(load_checkpoint, ckpt)
            self.name = meta.get("model", getattr(self.model, "name", "unknown"))
            self.checkpoint = ckpt
            self.norm = _norm_stats(meta)
            self._check_dims(meta)
            self._apply_text_finetune(meta)
        else:
            zoo_name = PLACEHOLDER_MODEL if name == "default" else name
            torch.manual_seed(0)
            self.model = build(zoo_name, self.dims)
            self.name = zoo_name
            self.checkpoint = ""
            self.placeholder = True
            log.warning("no trained checkpoint: using an untrained %s placeholder (scores are meaningless)", zoo_name)
        self.reads = model_reads(getattr(fusion_cfg, "model_inputs", "auto"), meta if ckpt else {})
        self.attribution = getattr(fusion_cfg, "attribution", "occlusion") == "occlusion"
        self.device = torch.device(fusion_cfg.device)
        self.model.to(self.device).eval()
        # How the forward pass runs: handed in by the caller (the model knows no backend or server).
        self.backend_factory = backend_factory
        self._backend: Callable[[Any], Any] | None = None

    @property
    def backend(self) -> Callable[[Any], Any]:
        """The forward pass of one window's inputs: what ``backend_factory`` made of this model
        (engine/live_backend.py: a compiled / ONNX / TensorRT backend or a fusion server), on
        first use; eager PyTorch without one."""
        if self._backend is None:
            with torch.inference_mode(False):  # tracing/export must not run under inference mode
                self._backend = (self.backend_factory or EagerForward)(self)
        return self._backend

    def warm_up(self) -> None:
        """One forward pass at start-up, so the first live window does not pay for lazy init."""
        from ..engine.windowing import Window

        empty = np.zeros((4, self.dims.vision), np.float32)
        window = Window(0.0, 1.0, empty, np.ones(4, bool), np.zeros((8, self.dims.audio), np.float32))
        self.predict(window)

    def _check_dims(self, meta: dict) -> None:
        dims = meta.get("dims") or {}
        for key in ("text", "audio", "vision"):
            if key in dims and int(dims[key]) != getattr(self.dims, key):
                raise ValueError(
                    f"checkpoint {self.checkpoint} expects {key} features of width {dims[key]}, "
                    f"the engine produces {getattr(self.dims, key)}"
                )

    def _apply_text_finetune(self, meta: dict) -> None:
        """A checkpoint trained on a fine-tuned text encoder names its layer file (beside the
        checkpoint) and sha256: the engine's encoder gets exactly those weights, or the model
        does not start (it would read embeddings it never saw)."""
        want = meta.get("text_finetune") or {}
        encoder = getattr(self.text_encoder, "encoder", self.text_encoder)  # BackgroundTextEncoder wraps one
        if not getattr(encoder, "encodes_text", True):  # the fusion server: windows arrive encoded
            return
        have = getattr(encoder, "finetune_sha256", "")
        if not want:
            if have:
                log.warning(
                    "text.finetune %s is applied, but checkpoint %s was trained on the plain encoder",
                    getattr(encoder, "finetune_path", "?"),
                    self.checkpoint,
                )
            return
        if have == want["sha256"]:
            return
        if have:
            raise ValueError(
                f"text.finetune {encoder.finetune_path} (sha256 {have[:12]}) is not the text encoder "
                f"checkpoint {self.checkpoint} was trained with ({want['file']}, sha256 "
                f"{want['sha256'][:12]}); leave text.finetune empty to use the checkpoint's own"
            )
        path = Path(self.checkpoint).parent / want["file"]
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint {self.checkpoint} needs its fine-tuned text encoder {path}; keep the two files together"
            )
        if not hasattr(encoder, "apply_finetune"):
            raise ValueError(
                f"checkpoint {self.checkpoint} needs a fine-tuned TextEncoder; "
                f"{type(encoder).__name__} cannot load {path.name}"
            )
        if encoder.apply_finetune(path) != want["sha256"]:
            raise ValueError(
                f"{path}: sha256 differs from the one checkpoint {self.checkpoint} recorded "
                "(the file was replaced); retrain with `sentistream train-live`"
            )
        log.info("text encoder: fine-tuned layers %s applied (sha256 %s)", path.name, want["sha256"][:12])

    def describe(self) -> dict:
        out = {"name": self.name, "placeholder": self.placeholder, "checkpoint": Path(self.checkpoint).name}
        if self._backend is not None:
            out["backend"] = getattr(self._backend, "name", type(self._backend).__name__)
        return out

    def _tensor(self, x: np.ndarray, key: str, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        dim = getattr(self.dims, key)
        if x.shape[0] > max_len:  # average into max_len bins: bounded cost per window
            edges = np.linspace(0, x.shape[0], max_len + 1).round().astype(int)
            x = np.add.reduceat(x, edges[:-1], axis=0) / np.diff(edges)[:, None]
        if key in self.norm and x.shape[0]:
            mean, std = self.norm[key]
            x = (x - mean) / std
        if x.shape[0] == 0:
            return torch.zeros(1, 1, dim), torch.zeros(1, 1, dtype=torch.bool)
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(0)
        return t, torch.ones(1, x.shape[0], dtype=torch.bool)

    def inputs_for(self, window):
        """The model's inputs for one window ([1, L, D] each, on the model's device) and the text
        encoder's time in ms."""
        from .base import FusionInputs

        t_start = time.perf_counter()
        emb = self.text_encoder.encode(window.context_text)
        text_ms = (time.perf_counter() - t_start) * 1e3
        self.last_text = emb.text if emb.text is not None else window.context_text
        text, text_mask = self._tensor(emb.tokens, "text", 128)
        vision = window.vision[window.vision_present] if window.vision_present.size else window.vision
        if not self.reads[2]:  # an input the model learned nothing from: masked, as in training
            vision = vision[:0]
        vis, vis_mask = self._tensor(vision, "vision", self.cfg.max_video_frames)
        aud, aud_mask = self._tensor(
            window.audio if self.reads[1] else window.audio[:0], "audio", self.cfg.max_audio_frames
        )
        inputs = FusionInputs(
            text=text.to(self.device),
            audio=aud.to(self.device),
            vision=vis.to(self.device),
            text_mask=text_mask.to(self.device),
            audio_mask=aud_mask.to(self.device),
            vision_mask=vis_mask.to(self.device),
        )
        return inputs, text_ms

    @torch.inference_mode()
    def predict(self, window) -> LivePrediction:
        inputs, text_ms = self.inputs_for(window)
        # Occlusion rows only where masking can change something: an audio / vision input the
        # model reads and the window has. The shipped text-only model stays at batch 1.
        occlude = self.attribution and bool(inputs.audio_mask.any() or inputs.vision_mask.any())
        t_model = time.perf_counter()
        out = self.backend(inputs.with_occlusions() if occlude else inputs)
        model_ms = (time.perf_counter() - t_model) * 1e3
        scores = [_clipped(float(v)) for v in out.score.reshape(-1).float().cpu()]
        score = scores[0]
        occluded = {"audio": scores[2], "vision": scores[3]} if occlude else {"audio": score, "vision": score}
        contrib = out.contributions.reshape(-1, 3)[0].float().cpu().numpy()
        contributions = {"text": float(contrib[0]), "audio": float(contrib[1]), "vision": float(contrib[2])}
        has_vision = bool(window.vision_present.any()) if window.vision_present.size else False
        present = (bool(self.last_text), bool(window.audio.shape[0]), has_vision)
        label = sentiment_label(score, self.cfg.neutral_band)
        conf = confidence(score, present, self.placeholder)
        return LivePrediction(score, label, conf, contributions, model_ms, text_ms, self.last_text, occluded)


def _clipped(score: float) -> float:
    return min(3.0, max(-3.0, score)) if np.isfinite(score) else 0.0


def model_reads(choice: str, meta: dict) -> tuple[bool, bool, bool]:
    """Which of text / audio / vision the fusion model reads (``fusion.model_inputs``).

    "auto": the checkpoint's ``learned_modalities`` when it records them; a live-training
    checkpoint whose audio / vision were label-independent (``data.av_presence``, the shipped one)
    reads text only; any other checkpoint or an untrained placeholder reads all three."""
    if choice == "text":
        return (True, False, False)
    if choice == "all":
        return (True, True, True)
    learned = meta.get("learned_modalities")
    if learned:
        return tuple(m in learned for m in ("text", "audio", "vision"))  # type: ignore[return-value]
    if "label-independent" in str((meta.get("data") or {}).get("av_presence", "")):
        return (True, False, False)
    return (True, True, True)


def _load(load_checkpoint, path: str):
    result = load_checkpoint(path)
    if isinstance(result, tuple):
        return result
    return result, dict(getattr(result, "checkpoint_meta", {}) or {})


def _norm_stats(meta: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for key, stats in (meta.get("normalisation") or {}).items():
        mean = np.asarray(stats["mean"], dtype=np.float32)
        std = np.maximum(np.asarray(stats["std"], dtype=np.float32), 1e-6)
        out[key] = (mean, std)
    return out
