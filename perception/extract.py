"""`sentistream extract`: the live stages' feature code over media files, offline.

Each clip is decoded by `perception.media.iter_media` (the live file source's
decoder) and fed, item by item, to the same extractors the face, audio-feature,
ASR and text stages use, so a model trained on extracted features sees what it
sees live. Output: an MMSA-compatible dataset pickle (MMSA's own format, read
by MMSA and by `sentistream train`); pickle is written only to the local file
the user names, never sent anywhere.

Resumable: every finished clip is kept as an .npz in `<out>.parts/`; a rerun
skips those. A file that cannot be read is reported and skipped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("sentistream.extract")

MEDIA_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".wav", ".mp3", ".flac", ".ogg", ".m4a"}
ASR_STEP_S = 1.0  # offline, the recogniser steps once per second of audio (live: as often as it can)


@dataclass
class ClipSpec:
    id: str
    path: str
    start_s: float = 0.0
    end_s: float = math.inf
    label: float = math.nan
    split: str = "test"


@dataclass
class ClipFeatures:
    id: str
    vision: np.ndarray  # [Tv, Dv] face features per frame
    vision_times: np.ndarray  # [Tv]
    vision_present: np.ndarray  # [Tv] bool
    audio: np.ndarray  # [Ta, Da] spectral frames
    audio_times: np.ndarray  # [Ta]
    text: np.ndarray  # [Lt, Dt] token embeddings of the transcript
    words: list[dict[str, Any]] = field(default_factory=list)

    @property
    def raw_text(self) -> str:
        return " ".join(w["text"].strip() for w in self.words).strip()


class FeaturePipeline:
    """The live stages' per-message work, in one process."""

    def __init__(self, config) -> None:
        from .asr import StreamingRecognizer, load_whisper
        from .audio_features import feature_dim, make_audio_extractor
        from .face import FACE_FEATURE_DIM, FaceFeatureExtractor
        from .text import TextEncoder

        self.config = config
        self.face = FaceFeatureExtractor(config.face)
        self.audio = make_audio_extractor(config.audio_features)
        self.recognizer = StreamingRecognizer(config.asr, load_whisper(config.asr))
        self.text = TextEncoder(config.text)
        self.vision_dim = FACE_FEATURE_DIM
        self.audio_dim = feature_dim(config.audio_features)

    def run(self, clip: ClipSpec) -> ClipFeatures:
        from .media import AudioItem, iter_media

        src = self.config.source
        self.face.reset()
        self.audio.reset()
        self.recognizer.reset()
        vis, vis_t, vis_p, aud, aud_t, words = [], [], [], [], [], []
        since_step = 0.0
        for item in iter_media(
            clip.path,
            src.sample_rate,
            src.audio_chunk_ms,
            src.width,
            src.height,
            start_s=clip.start_s,
            end_s=clip.end_s,
        ):
            if isinstance(item, AudioItem):
                frames = self.audio.process(item.samples, item.t)
                aud.append(frames.features)
                aud_t.append(frames.times_s)
                self.recognizer.add_audio(item.samples, item.t)
                since_step += item.samples.size / src.sample_rate
                if since_step >= ASR_STEP_S:
                    since_step = 0.0
                    words += self.recognizer.step().committed
            else:
                result = self.face.extract(item.rgb)
                vis.append(np.asarray(result.features, np.float32))
                vis_t.append(item.t)
                vis_p.append(bool(result.present))
        tail = self.audio.flush()
        aud.append(tail.features)
        aud_t.append(tail.times_s)
        words += self.recognizer.finish().committed
        word_dicts = [{"text": w.text, "start_s": w.start_s, "end_s": w.end_s} for w in words]
        transcript = " ".join(w.text.strip() for w in words).strip()
        return ClipFeatures(
            id=clip.id,
            vision=np.stack(vis) if vis else np.zeros((0, self.vision_dim), np.float32),
            vision_times=np.asarray(vis_t, np.float64),
            vision_present=np.asarray(vis_p, bool),
            audio=np.concatenate(aud) if aud else np.zeros((0, self.audio_dim), np.float32),
            audio_times=np.concatenate(aud_t) if aud_t else np.zeros(0, np.float64),
            text=self.text.encode(transcript).tokens,
            words=word_dicts,
        )


# ---- inputs ------------------------------------------------------------------
def clips_from_folder(folder: Path, split: str) -> list[ClipSpec]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in MEDIA_SUFFIXES and p.is_file())
    return [ClipSpec(str(p.relative_to(folder).with_suffix("")), str(p), split=split) for p in files]


def clips_from_csv(path: Path) -> list[ClipSpec]:
    """A label CSV with columns path, start, end, label, split (id optional)."""
    clips = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"path"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: the label CSV needs a 'path' column (has {reader.fieldnames})")
        for n, row in enumerate(reader, start=2):
            media = Path(row["path"])
            if not media.is_absolute():
                media = path.parent / media
            try:
                start = float(row.get("start") or 0.0)
                end = float(row.get("end") or math.inf)
                label = float(row["label"]) if row.get("label") not in (None, "") else math.nan
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: {exc}") from None
            clip_id = row.get("id") or f"{media.stem}_{start:g}_{end:g}"
            clips.append(ClipSpec(clip_id, str(media), start, end, label, (row.get("split") or "test").strip()))
    return clips


# ---- resumable parts ---------------------------------------------------------
def _part_path(parts: Path, clip: ClipSpec) -> Path:
    key = hashlib.sha1(f"{clip.id}|{clip.path}|{clip.start_s}|{clip.end_s}".encode()).hexdigest()[:16]
    return parts / f"{key}.npz"


def save_part(path: Path, feats: ClipFeatures) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        vision=feats.vision,
        vision_times=feats.vision_times,
        vision_present=feats.vision_present,
        audio=feats.audio,
        audio_times=feats.audio_times,
        text=feats.text,
        words=np.array(json.dumps(feats.words)),
        id=np.array(feats.id),
    )
    tmp.replace(path)  # atomic: an interrupted run never leaves a half-written part


def load_part(path: Path) -> ClipFeatures:
    with np.load(path, allow_pickle=False) as z:
        return ClipFeatures(
            id=str(z["id"]),
            vision=z["vision"],
            vision_times=z["vision_times"],
            vision_present=z["vision_present"],
            audio=z["audio"],
            audio_times=z["audio_times"],
            text=z["text"],
            words=json.loads(str(z["words"])),
        )


# ---- MMSA layout -------------------------------------------------------------
def _pad(seqs: list[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    n = max([s.shape[0] for s in seqs] + [1])
    out = np.zeros((len(seqs), n, dim), np.float32)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
    return out, np.array([s.shape[0] for s in seqs], np.int64)


def to_mmsa(items: list[tuple[ClipSpec, ClipFeatures]]) -> dict[str, dict[str, Any]]:
    """MMSA's dataset dict: {split: {text, audio, vision, *_lengths, raw_text, id, regression_labels}}."""
    out: dict[str, dict[str, Any]] = {}
    for split in sorted({c.split for c, _ in items}):
        rows = [(c, f) for c, f in items if c.split == split]
        text, text_len = _pad([f.text for _, f in rows], rows[0][1].text.shape[1] if rows[0][1].text.ndim == 2 else 384)
        audio, audio_len = _pad([f.audio for _, f in rows], rows[0][1].audio.shape[1])
        vision, vision_len = _pad([f.vision for _, f in rows], rows[0][1].vision.shape[1])
        out[split] = {
            "raw_text": np.array([f.raw_text for _, f in rows], dtype=object),
            "id": np.array([c.id for c, _ in rows], dtype=object),
            "text": text,
            "text_lengths": text_len,
            "audio": audio,
            "audio_lengths": audio_len,
            "vision": vision,
            "vision_lengths": vision_len,
            "regression_labels": np.array([c.label for c, _ in rows], np.float32),
        }
    return out


def extract(clips: list[ClipSpec], out: Path, config, progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    pipeline: FeaturePipeline | None = None
    done: list[tuple[ClipSpec, ClipFeatures]] = []
    failed: list[tuple[str, str]] = []
    resumed = 0
    for clip in tqdm(clips, desc="extract", unit="clip", disable=not progress, file=sys.stderr):
        part = _part_path(parts, clip)
        if part.is_file():
            done.append((clip, load_part(part)))
            resumed += 1
            continue
        if pipeline is None:
            pipeline = FeaturePipeline(config)  # loaded once, only when there is work
        try:
            feats = pipeline.run(clip)
        except Exception as exc:  # a bad file is reported and skipped, never fatal
            failed.append((clip.path, str(exc)))
            log.error("skipped %s: %s", clip.path, exc)
            continue
        save_part(part, feats)
        done.append((clip, feats))
    if done:
        with open(out, "wb") as f:
            pickle.dump(to_mmsa(done), f, protocol=4)
    return {"clips": len(clips), "extracted": len(done), "resumed": resumed, "failed": failed, "out": str(out)}
