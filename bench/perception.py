"""`sentistream bench perception`: the speed and accuracy of each perception stage.

Writes bench/results/perception.json and perception.md. Spoken test speech is
MOSI standard-test transcripts read by espeak-ng (the shared data's
mosi_transcripts.csv), so ASR accuracy is measured against real review text.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ..perception.wer import wer

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_TRANSCRIPTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "mosi" / "mosi_transcripts.csv"


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


# ---- spoken MOSI ---------------------------------------------------------------
@dataclass
class Utterance:
    id: str
    text: str
    audio: np.ndarray  # 16 kHz float32


def mosi_test_texts(path: Path, n: int) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["std_split"] == "test" and len(r["text"].split()) >= 3]
    return [(r["id"], r["text"]) for r in rows[:n]]


def speak_espeak(text: str, workdir: Path, word_gap: int = 0) -> np.ndarray:
    """espeak-ng (en-us, 150 wpm, 22.05 kHz) -> 16 kHz float32; ``word_gap``: espeak's ``-g``, a pause
    between words in units of 10 ms (0 = espeak's default run-together speech)."""
    import wave

    from scipy.signal import resample_poly

    wav = workdir / "u.wav"
    gap = ["-g", str(int(word_gap))] if word_gap else []
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", *gap, "-w", str(wav), text.lower()], check=True, capture_output=True
    )
    with wave.open(str(wav)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
    return resample_poly(x, 160, rate // 100).astype(np.float32) if rate != 16000 else x


def spoken_mosi(path: Path, n: int) -> list[Utterance]:
    with tempfile.TemporaryDirectory() as tmp:
        return [Utterance(i, t, speak_espeak(t, Path(tmp))) for i, t in mosi_test_texts(path, n)]


def concat_stream(utts: list[Utterance], gap_s: float = 1.0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """One stream: each utterance followed by gap_s of silence; returns (audio, [(start, end)])."""
    gap = np.zeros(int(gap_s * 16000), np.float32)
    pieces, spans, t = [gap[:8000]], [], 0.5
    for u in utts:
        spans.append((t, t + u.audio.size / 16000))
        pieces += [u.audio, gap]
        t += u.audio.size / 16000 + gap_s
    return np.concatenate(pieces), spans


def assign_words(words, spans: list[tuple[float, float]]) -> list[str]:
    out = [[] for _ in spans]
    for w in words:
        mid = 0.5 * (w.start_s + w.end_s)
        for i, (a, b) in enumerate(spans):
            if a - 0.5 <= mid <= b + 0.7:
                out[i].append(w.text)
                break
    return [" ".join(x) for x in out]


# ---- measurements -------------------------------------------------------------
def bench_face(n: int = 100) -> float:
    from skimage.data import astronaut

    from ..perception.face import FaceFeatureExtractor

    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, 64:576] = astronaut()[:480]
    ex = FaceFeatureExtractor()
    for _ in range(5):
        ex.extract(frame)
    t = time.perf_counter()
    for i in range(n):
        f = frame if i % 2 else np.roll(frame, 2, axis=1)  # tracking mode on slightly moving input
        ex.extract(f)
    return (time.perf_counter() - t) / n * 1e3


def bench_audio(audio: np.ndarray, repeats: int = 5) -> dict:
    """Median over ``repeats`` passes (a shared 2-core machine varies by +-20 % run to run)."""
    from ..perception.audio_features import AudioFeatureExtractor

    seconds = audio.size / 16000
    chunked, whole = [], []
    for _ in range(repeats):
        ex = AudioFeatureExtractor()
        t = time.perf_counter()
        for i in range(0, audio.size, 1600):  # the live stage's 100 ms chunks
            ex.process(audio[i : i + 1600], i / 16000)
        chunked.append((time.perf_counter() - t) * 1e3 / seconds)
        ex = AudioFeatureExtractor()
        t = time.perf_counter()
        ex.process(audio, 0.0)
        whole.append((time.perf_counter() - t) * 1e3 / seconds)
    out = {
        "audio_ms_per_audio_s": float(np.median(chunked)),
        "audio_ms_per_audio_s_whole_file": float(np.median(whole)),
        "audio_ms_per_audio_s_runs": [round(x, 3) for x in chunked],
    }
    try:  # the optional eGeMAPS extractor, when opensmile is installed (never the default)
        from ..perception.audio_features import AudioFeatureOptions, make_audio_extractor

        ex = make_audio_extractor(AudioFeatureOptions(extractor="egemaps"))
    except ImportError:
        return out
    t = time.perf_counter()
    for i in range(0, audio.size, 1600):
        ex.process(audio[i : i + 1600], i / 16000)
    ex.flush()
    out["audio_egemaps_ms_per_audio_s"] = (time.perf_counter() - t) * 1e3 / seconds
    return out


def bench_text(texts: list[str]) -> float:
    from ..perception.text import TextEncoder, TextEncoderOptions

    enc = TextEncoder(TextEncoderOptions())
    enc.encode("warm up")
    windows = [" ".join(t.split()[:12]) for t in texts]  # a 3 s window holds about 8-12 words
    t = time.perf_counter()
    for i, w in enumerate(windows):
        enc.encode(f"{w} {i}")  # unique text: no cache hits
    return (time.perf_counter() - t) / len(windows) * 1e3


def bench_asr_batch(utts: list[Utterance], model) -> tuple[float, list[str]]:
    from ..perception.asr import AsrOptions, transcribe_file_batch

    total_audio = sum(u.audio.size for u in utts) / 16000
    hyps = []
    t = time.perf_counter()
    for u in utts:
        hyps.append(" ".join(w.text for w in transcribe_file_batch(u.audio, AsrOptions(), model=model)))
    return total_audio / (time.perf_counter() - t), hyps


def bench_asr_streaming_fast(utts: list[Utterance], model) -> list[str]:
    """The streaming recogniser over one long stream, fed as fast as it decodes."""
    from ..perception.asr import AsrOptions, StreamingRecognizer

    audio, spans = concat_stream(utts)
    rec = StreamingRecognizer(AsrOptions(), model)
    words = []
    for i in range(0, audio.size, 1600):
        rec.add_audio(audio[i : i + 1600], i / 16000)
        if (i // 1600) % 10 == 9:  # about one step per second of audio, as the live thread manages
            words += rec.step().committed
    words += rec.finish().committed
    return assign_words(words, spans)


def bench_asr_realtime(utts: list[Utterance], model, min_seconds: float) -> dict:
    """Real-time pace: a feeder thread plays the stream; the recogniser steps as often as it can."""
    from ..perception.asr import AsrOptions, StreamingRecognizer

    chosen, total = [], 0.0
    for u in utts:
        chosen.append(u)
        total += u.audio.size / 16000 + 1.0
        if total >= min_seconds:
            break
    audio, spans = concat_stream(chosen)
    rec = StreamingRecognizer(AsrOptions(), model)
    t0 = time.perf_counter()
    done = threading.Event()

    def feed() -> None:
        for i in range(0, audio.size, 1600):
            target = t0 + i / 16000
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            rec.add_audio(audio[i : i + 1600], i / 16000)
        done.set()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    lags: list[tuple[float, float]] = []  # (word end on the stream clock, commit lag in s)
    while not done.is_set():
        update = rec.step()
        now = time.perf_counter() - t0
        lags += [(w.end_s, now - w.end_s) for w in update.committed]
        if not update.decoded:
            time.sleep(0.02)
    update = rec.finish()
    now = time.perf_counter() - t0
    lags += [(w.end_s, now - w.end_s) for w in update.committed]
    arr = np.array([lag for _, lag in lags]) * 1e3
    ends = np.array([t for t, _ in lags]) / 60.0
    slope = float(np.polyfit(ends, arr, 1)[0]) if len(lags) > 2 else float("nan")
    return {
        "asr_commit_lag_p50_ms": float(np.percentile(arr, 50)),
        "asr_commit_lag_p90_ms": float(np.percentile(arr, 90)),
        "asr_commit_lag_slope_ms_per_min": slope,
        "asr_streamed_audio_s": audio.size / 16000,
        "asr_words_committed": len(lags),
    }


def run(args) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..perception.asr import AsrOptions, load_whisper

    transcripts = Path(args.transcripts)
    if not transcripts.is_file():
        raise SystemExit(f"error: {transcripts} not found (pass --transcripts PATH to mosi_transcripts.csv)")
    print(f"speaking {args.utterances} MOSI std-test utterances with espeak-ng ...", file=sys.stderr)
    utts = spoken_mosi(transcripts, args.utterances)
    model = load_whisper(AsrOptions())
    out: dict = {
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "asr_options": {k: v for k, v in vars(AsrOptions()).items()},
    }
    out["command"] = "sentistream bench perception " + " ".join(sys.argv[3:])
    print("face ...", file=sys.stderr)
    out["face_ms_per_frame"] = bench_face()
    print("audio features ...", file=sys.stderr)
    out.update(bench_audio(concat_stream(utts[:30])[0]))
    print("text encoder ...", file=sys.stderr)
    out["text_ms_per_window"] = bench_text([u.text for u in utts])
    print("batch ASR ...", file=sys.stderr)
    refs = [u.text for u in utts]
    out["asr_realtime_factor"], batch_hyps = bench_asr_batch(utts, model)
    print("streaming ASR (fast) ...", file=sys.stderr)
    stream_hyps = bench_asr_streaming_fast(utts, model)
    out["wer_spoken_mosi"] = wer(refs, stream_hyps)
    out["wer_batch_spoken_mosi"] = wer(refs, batch_hyps)
    out["wer_streaming_vs_batch"] = wer(batch_hyps, stream_hyps)
    out["wer_utterances"] = len(utts)
    print(f"streaming ASR at real-time pace over >= {args.realtime_seconds:.0f} s ...", file=sys.stderr)
    out.update(bench_asr_realtime(utts, model, args.realtime_seconds))
    out["targets"] = {
        "face_ms_per_frame": "<= 15",
        "audio_ms_per_audio_s": "<= 5",
        "asr_realtime_factor": ">= 3",
        "asr_commit_lag_p50_ms": "<= 1500, slope about 0",
    }
    return out


def write(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "perception.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [k for k in result if k not in ("machine", "date", "command", "targets")]
    lines = [
        "# Perception benchmark",
        "",
        f"Machine: {result['machine']['cpu']} ({result['machine']['cores']} cores), date {result['date']}.",
        f"Command: `{result['command']}`",
        "",
        "| metric | value | target |",
        "| --- | --- | --- |",
    ]
    for k in rows:
        v = result[k]
        lines.append(
            f"| {k} | {v:.3f} | {result['targets'].get(k, '')} |" if isinstance(v, float) else f"| {k} | {v} | |"
        )
    (out_dir / "perception.md").write_text("\n".join(lines) + "\n")


def cmd_perception(args) -> int:
    result = run(args)
    write(result, Path(args.out))
    print(json.dumps(result, indent=2))
    return 0


def register(bench_subparsers) -> None:
    p = bench_subparsers.add_parser("perception", help="face, audio, text and ASR speed; ASR WER and commit lag")
    p.add_argument("--transcripts", default=str(DEFAULT_TRANSCRIPTS), help="mosi_transcripts.csv")
    p.add_argument("--utterances", type=int, default=100, help="MOSI std-test utterances to speak (>= 100)")
    p.add_argument(
        "--realtime-seconds",
        type=float,
        default=180.0,
        help="length of the real-time streaming run (>= 90; longer gives a steadier lag slope)",
    )
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    p.set_defaults(func=cmd_perception)
