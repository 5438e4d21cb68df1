"""Vocal affect: a valence score for a stretch of speech, from the Whisper encoder.

The engine's own Whisper tiny.en encoder (already loaded for ASR) reads the clip unpadded (a few
ms a second of audio); its output frames are pooled to mean + std (2 x 384 values) and a linear
head trained on RAVDESS (speaker-independent: ``sentistream train-voice``, models/MODEL_CARD.md)
gives P(positive voice): valence = 2 P - 1 in [-1, 1]. Positive = happy, calm; negative = sad,
angry, fearful, disgust (the affect benchmark's mapping).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("sentistream.voice")

SAMPLE_RATE = 16000
MIN_SPEECH_S = 0.5  # shorter stretches carry too little voice to score


def default_head_path() -> Path:
    return Path(str(resources.files("sentistream.models").joinpath("affect/voice_valence.safetensors")))


def whisper_embedding(model: Any, audio: np.ndarray) -> np.ndarray:
    """Mean + std over time of the Whisper encoder's output for ``audio`` (16 kHz mono float32),
    unpadded: [2 * d_model] float32. ``model`` is a faster-whisper ``WhisperModel``."""
    audio = np.asarray(audio, np.float32).reshape(-1)
    feats = model.feature_extractor(audio)  # log-mel [n_mels, frames]
    frames = max(2, feats.shape[-1] - feats.shape[-1] % 2)  # the encoder halves the frame count
    feats = np.ascontiguousarray(feats[:, :frames], dtype=np.float32)
    out = np.asarray(model.encode(feats))  # [1, frames / 2, d_model] (on the CPU)
    h = out.reshape(-1, out.shape[-1]).astype(np.float32)
    return np.concatenate([h.mean(0), h.std(0)])


@dataclass
class VoiceHead:
    """Standardise, then logistic regression: P(positive voice)."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: float
    meta: dict[str, Any]

    def probability(self, emb: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(emb) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(z @ self.weight + self.bias)))

    def valence(self, emb: np.ndarray) -> np.ndarray:
        return 2.0 * self.probability(emb) - 1.0

    def save(self, path: str | Path) -> None:
        import json

        from safetensors.numpy import save_file

        tensors = {
            "mean": self.mean,
            "scale": self.scale,
            "weight": self.weight,
            "bias": np.array([self.bias], np.float32),
        }
        save_file(
            {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
            str(path),
            metadata={"meta": json.dumps(self.meta)},
        )

    @classmethod
    def load(cls, path: str | Path | None = None) -> VoiceHead:
        import json

        from safetensors import safe_open

        path = Path(path) if path else default_head_path()
        with safe_open(str(path), framework="numpy") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        return cls(t["mean"], t["scale"], t["weight"], float(t["bias"][0]), meta)


class VoiceAffect:
    """``valence(audio)`` for the last stretch of speech, on a loaded Whisper model."""

    def __init__(self, model: Any, head: VoiceHead) -> None:
        self.model = model
        self.head = head

    def valence(self, audio: np.ndarray) -> float | None:
        """None for audio shorter than MIN_SPEECH_S."""
        if np.asarray(audio).size < MIN_SPEECH_S * SAMPLE_RATE:
            return None
        return float(self.head.valence(whisper_embedding(self.model, audio))[0])


def load_voice_affect(model: Any, head_path: str = "") -> VoiceAffect | None:
    """The voice head on ``model`` (a local WhisperModel), or None: "none", no head file, or a
    Whisper server (its encoder is not here): logged once, the ASR stage goes on without it."""
    if head_path == "none" or model is None or not hasattr(model, "feature_extractor"):
        return None
    try:
        return VoiceAffect(model, VoiceHead.load(head_path or None))
    except (OSError, KeyError, ValueError) as exc:
        log.warning("voice affect off: %s", exc)
        return None
