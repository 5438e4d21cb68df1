#!/usr/bin/env python
"""Build the bundled demo clip ``assets/demo.mp4`` and its ground truth ``assets/demo.json``.

Video: skimage's ``astronaut`` photo (NASA, public domain) on a 640x480 canvas with a gentle,
smooth pan/zoom, 15 fps, H.264 yuv420p.  Audio: espeak-ng speech (en-us), resampled to
16 kHz mono, AAC; clearly positive and clearly negative sentences separated by ~1 s of
silence.  The JSON lists every sentence with its sentiment and its start/end in the clip,
measured from the generated speech itself.

The build is deterministic: same inputs, same tools -> same bytes (single-threaded x264,
bitexact flags, no timestamps in the container).

    python scripts/make_demo.py [--out assets/demo.mp4]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import wave
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from scipy.signal import resample_poly
from skimage import data

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "assets" / "demo.mp4"

WIDTH, HEIGHT = 640, 480
FPS = 15
SAMPLE_RATE = 16000
VOICE = "en-us"
SPEED_WPM = 150
LEAD_SILENCE_S = 0.5
GAP_SILENCE_S = 1.0
MIN_TAIL_SILENCE_S = 0.5
TARGET_DURATION_S = 20.0  # trailing silence pads the clip up to this length
CRF = 28

SENTENCES: list[tuple[str, str]] = [
    ("I really love this movie, it is wonderful and amazing.", "positive"),
    ("This film was terrible, boring and awful, I hated it.", "negative"),
    ("The acting was brilliant and I am very happy.", "positive"),
    ("What a horrible waste of time, I am so disappointed.", "negative"),
]

# Speech activity inside an espeak-ng piece: 10 ms frames whose RMS exceeds this (int16 units,
# about -50 dBFS) count as speech; a small margin is kept around the detected span.
_VAD_FRAME_S = 0.010
_VAD_RMS = 100.0
_KEEP_MARGIN_S = 0.030


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        sys.exit(f"make_demo: '{tool}' not found on PATH (apt-get install {tool})")
    return path


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise RuntimeError(f"{path}: expected 16-bit mono, got {w.getnchannels()} ch / {w.getsampwidth()} B")
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float64), rate


def _write_wav(path: Path, pcm: np.ndarray, rate: int) -> None:
    pcm16 = np.clip(np.round(pcm), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16.tobytes())


def synthesize(text: str, tmp: Path, index: int) -> tuple[np.ndarray, int, int]:
    """espeak-ng -> 16 kHz mono float PCM (int16 scale), trimmed to the spoken span +- margin.

    Returns (pcm, onset, offset): the speech occupies samples [onset, offset) of ``pcm``."""
    raw = tmp / f"piece{index}.wav"
    subprocess.run(
        [_require("espeak-ng"), "-v", VOICE, "-s", str(SPEED_WPM), "-w", str(raw), text],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    pcm, rate = _read_wav(raw)
    if rate != SAMPLE_RATE:
        g = math.gcd(rate, SAMPLE_RATE)
        pcm = resample_poly(pcm, SAMPLE_RATE // g, rate // g)
    hop = int(round(_VAD_FRAME_S * SAMPLE_RATE))
    n = len(pcm) // hop
    rms = np.sqrt(np.mean(pcm[: n * hop].reshape(n, hop) ** 2, axis=1))
    voiced = np.flatnonzero(rms > _VAD_RMS)
    if voiced.size == 0:
        raise RuntimeError(f"espeak-ng produced silence for {text!r}")
    margin = int(round(_KEEP_MARGIN_S * SAMPLE_RATE))
    lo = max(0, voiced[0] * hop - margin)
    hi = min(len(pcm), (voiced[-1] + 1) * hop + margin)
    onset, offset = voiced[0] * hop - lo, (voiced[-1] + 1) * hop - lo
    return pcm[lo:hi], int(onset), int(offset)


def build_audio(tmp: Path) -> tuple[np.ndarray, list[dict], int]:
    """Concatenate the pieces with silences; pad so the clip is a whole number of video frames
    and of audio samples.  Returns (pcm, sentence records, number of video frames)."""
    chunks: list[np.ndarray] = [np.zeros(int(round(LEAD_SILENCE_S * SAMPLE_RATE)))]
    records: list[dict] = []
    cursor = len(chunks[0])
    for i, (text, sentiment) in enumerate(SENTENCES):
        if i:
            gap = np.zeros(int(round(GAP_SILENCE_S * SAMPLE_RATE)))
            chunks.append(gap)
            cursor += len(gap)
        piece, onset, offset = synthesize(text, tmp, i)
        chunks.append(piece)
        start = (cursor + onset) / SAMPLE_RATE
        end = (cursor + offset) / SAMPLE_RATE
        records.append({"text": text, "sentiment": sentiment, "start_s": round(start, 3), "end_s": round(end, 3)})
        cursor += len(piece)
    # Whole frames, and a frame count divisible by 3 so 16000 / 15 * n is an integer sample count.
    min_len_s = max(cursor / SAMPLE_RATE + MIN_TAIL_SILENCE_S, TARGET_DURATION_S)
    n_frames = int(math.ceil(min_len_s * FPS / 3.0)) * 3
    total = n_frames * SAMPLE_RATE // FPS
    chunks.append(np.zeros(total - cursor))
    pcm = np.concatenate(chunks)
    peak = np.max(np.abs(pcm))
    if peak > 0:  # normalise to -1 dBFS
        pcm = pcm * (0.89 * 32767.0 / peak)
    return pcm, records, n_frames


def _background(photo: np.ndarray) -> np.ndarray:
    """Blurred, darkened 'cover' fill of the photo for the canvas margins."""
    side = max(WIDTH, HEIGHT)
    big = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
    y0 = (side - HEIGHT) // 2
    bg = big[y0 : y0 + HEIGHT, :WIDTH]
    bg = cv2.GaussianBlur(bg, (0, 0), sigmaX=18)
    return (bg.astype(np.float32) * 0.45).astype(np.uint8)


def frames(n_frames: int):
    """Yield RGB uint8 frames (HEIGHT, WIDTH, 3): the photo, anchored on the face, slowly
    panning a few pixels and breathing a few percent in zoom (smooth sinusoids)."""
    photo = data.astronaut()  # 512x512 RGB; the face is around x 170..280, y 15..195
    bg = _background(photo)
    face = np.array([225.0, 105.0])  # face centre in photo coordinates
    anchor = np.array([320.0, 122.0])  # where the face centre sits on the canvas
    base_scale = 1.2
    for k in range(n_frames):
        t = k / FPS
        scale = base_scale * (1.0 + 0.02 * (1.0 - math.cos(2 * math.pi * t / 10.0)))  # x1.00 .. x1.04
        dx = 6.0 * math.sin(2 * math.pi * t / 13.0)
        dy = 4.0 * math.sin(2 * math.pi * t / 7.0 + 0.6)
        c = anchor + np.array([dx, dy])
        m = np.array([[scale, 0.0, c[0] - scale * face[0]], [0.0, scale, c[1] - scale * face[1]]])
        out = bg.copy()
        cv2.warpAffine(photo, m, (WIDTH, HEIGHT), dst=out, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
        yield out


def encode(out: Path, wav: Path, n_frames: int) -> None:
    cmd = [
        _require("ffmpeg"),
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{WIDTH}x{HEIGHT}",
        "-r",
        str(FPS),
        "-i",
        "-",
        "-i",
        str(wav),
        "-map",
        "0:v:0",
        "-map",
        "1:a:0",
        "-c:v",
        "libx264",
        "-preset",
        "medium",
        "-crf",
        str(CRF),
        "-pix_fmt",
        "yuv420p",
        "-profile:v",
        "high",
        "-g",
        str(2 * FPS),
        "-threads",
        "1",
        "-c:a",
        "aac",
        "-b:a",
        "64k",
        "-ar",
        str(SAMPLE_RATE),
        "-ac",
        "1",
        "-map_metadata",
        "-1",
        "-fflags",
        "+bitexact",
        "-flags:v",
        "+bitexact",
        "-flags:a",
        "+bitexact",
        "-movflags",
        "+faststart",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        for frame in frames(n_frames):
            proc.stdin.write(np.ascontiguousarray(frame).tobytes())
    finally:
        proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed with exit code {proc.returncode}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .mp4 (the .json goes next to it)")
    args = ap.parse_args(argv)
    out: Path = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    meta_path = out.with_suffix(".json")

    with tempfile.TemporaryDirectory(prefix="sentistream-demo-") as tmpdir:
        tmp = Path(tmpdir)
        pcm, records, n_frames = build_audio(tmp)
        wav = tmp / "speech.wav"
        _write_wav(wav, pcm, SAMPLE_RATE)
        encode(out, wav, n_frames)

    duration = Fraction(n_frames, FPS)
    meta = {
        "duration_s": round(float(duration), 3),
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "width": WIDTH,
        "height": HEIGHT,
        "n_frames": n_frames,
        "sentences": records,
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {n_frames} frames, {float(duration):.3f} s)")
    print(f"wrote {meta_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
