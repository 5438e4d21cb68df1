"""Recordings for `sentistream bench stream`: a media file, its time-stamped labels and, where
known, its true words at their own times.

* :func:`mosi_streams`: each CMU-MOSI video of a standard fold as one continuous recording: its
  utterances in their order, spoken by espeak-ng as in the mosi_spoken suite (en-us, 150 wpm,
  word gap ``GAPPED_WORD_GAP``), separated by seeded pauses of 0.4-1.2 s, with a face video track
  (skimage's astronaut, slowly panning, as in the demo clip). Cached by content.
* :func:`folder_recordings`: any folder of ``NAME.<media>`` + ``NAME.csv`` (header
  ``start_s,end_s,label``, label in [-3, 3]) and optionally ``NAME.words.json`` (a JSON list of
  ``{"text", "start_s", "end_s"}``: enables the ``reference`` variant).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
FPS = 10  # the face track: enough for the face readout, cheap to replay
WIDTH, HEIGHT = 480, 360
PAUSE_S = (0.4, 1.2)
LEAD_S = 0.5  # silence before the first utterance
TAIL_S = 1.5  # silence after the last one: the stream's flip lag has room to show
MEDIA_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".wav", ".flac", ".mp3", ".ogg", ".m4a")
CACHE_VERSION = "stream-v1"


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    label: float  # in [-3, 3]
    text: str = ""


@dataclass(frozen=True)
class Recording:
    name: str
    media: Path
    segments: list[Segment]
    words: Path | None = None  # the reference words JSON, when known

    @property
    def duration_s(self) -> float:
        return max((s.end_s for s in self.segments), default=0.0) + TAIL_S


# --------------------------------------------------------------------------- a user's folder
def read_segments(path: Path) -> list[Segment]:
    """``start_s,end_s,label[,text]`` rows (a header line first); a malformed file is a ValueError
    naming the row."""
    out = []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows, start=2):
        try:
            seg = Segment(float(row["start_s"]), float(row["end_s"]), float(row["label"]), row.get("text") or "")
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}:{i}: need start_s,end_s,label numbers (header start_s,end_s,label)") from None
        if not (seg.end_s > seg.start_s >= 0 and math.isfinite(seg.label)):
            raise ValueError(f"{path}:{i}: need 0 <= start_s < end_s and a finite label")
        out.append(seg)
    if not out:
        raise ValueError(f"{path}: no labelled segments")
    return sorted(out, key=lambda s: s.start_s)


def folder_recordings(folder: Path) -> list[Recording]:
    """The recordings of a ``--data`` folder (module docstring)."""
    recs = []
    for media in sorted(p for p in folder.iterdir() if p.suffix.lower() in MEDIA_SUFFIXES):
        labels = media.with_suffix(".csv")
        if not labels.is_file():
            continue
        words = media.with_suffix(".words.json")
        recs.append(Recording(media.stem, media, read_segments(labels), words if words.is_file() else None))
    if not recs:
        raise ValueError(f"{folder}: no NAME.<media> with a NAME.csv of start_s,end_s,label beside it")
    return recs


# --------------------------------------------------------------------------- MOSI streams
def mosi_videos(csv_path: Path, split: str) -> dict[str, list[tuple[str, str, float]]]:
    """video id -> its (utterance id, text, label) of ``split`` (a standard fold), in spoken order."""
    from ..models import data as data_mod

    cols = data_mod.read_mosi_transcripts(csv_path)
    videos: dict[str, list[tuple[int, str, str, float]]] = {}
    for i in np.where(cols["std_split"] == split)[0]:
        text = str(cols["text"][i]).strip()
        if not text:
            continue
        uid = str(cols["id"][i])
        index = int(uid.rsplit("_", 1)[1]) if uid.rsplit("_", 1)[-1].isdigit() else i
        videos.setdefault(str(cols["video_id"][i]), []).append((index, uid, text, float(cols["label"][i])))
    return {v: [(u, t, lab) for _, u, t, lab in sorted(us)] for v, us in sorted(videos.items())}


def word_times(audio: np.ndarray, text: str, t0: float) -> list[dict]:
    """The words of one synthesized utterance at their own times: espeak's word gaps are silent
    runs, found in 10 ms frames; where they do not match the word count the voiced span is shared
    out by word length."""
    words = text.split()
    frame = SAMPLE_RATE // 100
    n = audio.size // frame
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1)) if n else np.zeros(0)
    voiced = rms > max(1e-3, 0.02 * float(rms.max(initial=0.0)))
    idx = np.flatnonzero(voiced)
    if not words or not idx.size:
        return []
    first, last = int(idx[0]), int(idx[-1]) + 1
    runs, start, k = [], first, first  # voiced stretches split by >= 50 ms of silence
    while k < last:
        if voiced[k]:
            k += 1
            continue
        j = k
        while j < last and not voiced[j]:
            j += 1
        if j - k >= 5:
            runs.append((start, k))
            start = j
        k = j
    runs.append((start, last))
    if len(runs) == len(words):
        spans = [(a / 100, b / 100) for a, b in runs]
    else:
        weights = np.array([len(w) + 1 for w in words], float)
        edges = first / 100 + np.concatenate([[0], np.cumsum(weights)]) / weights.sum() * (last - first) / 100
        spans = list(zip(edges[:-1], edges[1:]))
    return [{"text": w, "start_s": round(t0 + a, 3), "end_s": round(t0 + b, 3)} for w, (a, b) in zip(words, spans)]


def _face_frames(n_frames: int):
    """The astronaut photo, panning a few pixels and breathing a few percent (as the demo clip)."""
    import cv2
    from skimage import data

    photo = data.astronaut()
    side = max(WIDTH, HEIGHT)
    bg = cv2.GaussianBlur(cv2.resize(photo, (side, side))[(side - HEIGHT) // 2 :][:HEIGHT, :WIDTH], (0, 0), 12)
    bg = (bg.astype(np.float32) * 0.45).astype(np.uint8)
    face, anchor = np.array([225.0, 105.0]), np.array([WIDTH / 2, HEIGHT * 0.3])
    for k in range(n_frames):
        t = k / FPS
        scale = 0.95 * (1.0 + 0.02 * (1.0 - math.cos(2 * math.pi * t / 10.0)))
        c = anchor + np.array([5.0 * math.sin(2 * math.pi * t / 13.0), 3.0 * math.sin(2 * math.pi * t / 7.0)])
        m = np.array([[scale, 0.0, c[0] - scale * face[0]], [0.0, scale, c[1] - scale * face[1]]])
        out = bg.copy()
        cv2.warpAffine(photo, m, (WIDTH, HEIGHT), dst=out, borderMode=cv2.BORDER_TRANSPARENT)
        yield out


def write_media(path: Path, audio: np.ndarray, video: bool = True) -> None:
    """A 16 kHz mono track (and the face track) into ``path`` (.mp4 with video, else .wav)."""
    with tempfile.TemporaryDirectory(prefix="sentistream-stream-") as tmp:
        wav = Path(tmp) / "a.wav" if video else path
        with wave.open(str(wav), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())
        if not video:
            return
        n_frames = int(math.ceil(audio.size / SAMPLE_RATE * FPS))
        cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24"]
        cmd += ["-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "-", "-i", str(wav)]
        cmd += ["-map", "0:v:0", "-map", "1:a:0", "-c:v", "libx264", "-preset", "veryfast", "-crf", "28"]
        cmd += ["-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-shortest", str(path)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
        assert proc.stdin is not None
        for frame in _face_frames(n_frames):
            proc.stdin.write(frame.tobytes())
        proc.stdin.close()
        if proc.wait() != 0:
            raise RuntimeError(f"ffmpeg failed writing {path}")


def build_recording(
    folder: Path, name: str, utterances: list[tuple[str, str, float]], rng: np.random.Generator, video: bool = True
) -> Recording:
    """One video's utterances spoken in order with pauses: media + labels CSV + words JSON."""
    from .accuracy_spoken import GAPPED_WORD_GAP
    from .perception import speak_espeak

    parts = [np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32)]
    t = LEAD_S
    segments, words = [], []
    with tempfile.TemporaryDirectory(prefix="sentistream-espeak-") as tmp:
        for i, (_, text, label) in enumerate(utterances):
            if i:
                gap = np.zeros(int(rng.uniform(*PAUSE_S) * SAMPLE_RATE), np.float32)
                parts.append(gap)
                t += gap.size / SAMPLE_RATE
            audio = speak_espeak(text, Path(tmp), GAPPED_WORD_GAP)
            spoken = word_times(audio, text.lower(), t)
            if spoken:
                words += spoken
                segments.append(Segment(spoken[0]["start_s"], spoken[-1]["end_s"], label, text.lower()))
            parts.append(audio)
            t += audio.size / SAMPLE_RATE
    parts.append(np.zeros(int(TAIL_S * SAMPLE_RATE), np.float32))
    media = folder / f"{name}{'.mp4' if video else '.wav'}"
    write_media(media, np.concatenate(parts), video)
    with (folder / f"{name}.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["start_s", "end_s", "label", "text"])
        for s in segments:
            out.writerow([f"{s.start_s:.3f}", f"{s.end_s:.3f}", f"{s.label:.4f}", s.text])
    wpath = folder / f"{name}.words.json"
    wpath.write_text(json.dumps(words))
    return Recording(name, media, segments, wpath)


def mosi_streams(
    csv_path: Path, split: str, n_videos: int | None, seed: int, video: bool = True, cache: bool = True
) -> list[Recording]:
    """The MOSI videos of ``split`` (first ``n_videos``) as recordings, built once per content in
    the sentistream cache dir."""
    from ..models import data as data_mod

    videos = mosi_videos(csv_path, split)
    names = list(videos)[:n_videos] if n_videos else list(videos)
    key = hashlib.sha1(json.dumps([CACHE_VERSION, split, seed, video, names, [videos[n] for n in names]]).encode())
    folder = data_mod.default_cache_dir() / f"stream_{split}_{key.hexdigest()[:12]}"
    done = folder / "complete"
    if cache and done.is_file():
        return folder_recordings(folder)
    folder.mkdir(parents=True, exist_ok=True)
    recs = []
    for i, name in enumerate(names):
        rng = np.random.default_rng([seed, i])  # each video's pauses, whatever else is built
        recs.append(build_recording(folder, name, videos[name], rng, video))
    done.write_text(f"{len(recs)}\n")
    return recs
