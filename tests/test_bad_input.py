"""Bad input end to end: corrupt and empty media files through `sentistream run`, and odd
data (1x1 and 8K frames, zero-length and NaN/Inf audio) fed to a running stage in
isolation. Each case is handled with a clear message; no stage dies.
(The wire decoder itself is fuzzed in test_fuzz_decoder.py.)"""

from __future__ import annotations

import json
import subprocess
import time
import wave

import numpy as np
import pytest
from conftest import REPO, read_jsonl, sentistream_cmd

from sentistream.engine.harness import IsolatedStage
from sentistream.engine.messages import Message, now_ns


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        sentistream_cmd("run", *args, "--view", "none"), capture_output=True, text=True, timeout=timeout
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ---- media files ----------------------------------------------------------------------------------


def test_random_bytes_named_mp4_fail_in_one_clear_line(tmp_path):
    bad = tmp_path / "random.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    t = time.monotonic()
    proc = _run("--source", str(bad))
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1 and "cannot open media file" in errors[0] and str(bad) in errors[0], errors
    assert time.monotonic() - t < 60  # stages still loading models are not waited for


@pytest.mark.parametrize("kind", ["zero-byte", "zero-samples"])
def test_empty_media_fails_in_one_clear_line(tmp_path, kind):
    path = tmp_path / "empty.wav"
    if kind == "zero-byte":
        path.write_bytes(b"")
    else:  # a valid WAV header with no samples: zero-length audio
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(b"")
    proc = _run("--source", str(path))
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1 and str(path) in errors[0], errors
    assert ("cannot open media file" in errors[0]) or ("no decodable" in errors[0]), errors


@pytest.mark.slow
def test_truncated_demo_clip_plays_what_it_can_and_says_so(tmp_path):
    data = (REPO / "assets" / "demo.mp4").read_bytes()
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(data[: len(data) * 3 // 10])
    out = tmp_path / "events.jsonl"
    proc = _run("--source", str(cut), "--pace", "fast", "--jsonl", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "truncated or damaged" in line]
    assert len(warnings) == 1 and str(cut) in warnings[0], proc.stderr[-3000:]
    events = read_jsonl(out)
    assert 4 <= len(events) < 80  # what could be decoded (a few seconds), not the whole 20 s


# ---- one stage in isolation ---------------------------------------------------------------------


@pytest.fixture
def face_stage():
    stage = IsolatedStage("face", "video", "face")
    yield stage
    stage.close()


@pytest.fixture
def audio_stage():
    stage = IsolatedStage("audio_features", "audio", "audio_feat")
    yield stage
    stage.close()


def test_face_stage_takes_1x1_and_8k_frames_and_refuses_larger(face_stage):
    st = face_stage
    tiny = Message("video_frame", "video", 0, now_ns(), 0.0, [np.full((1, 1, 3), 128, np.uint8)])
    st.send(tiny)
    got = [m for m in st.receive(10.0, until=bool) if m.kind == "face_features"]
    assert got and got[0].meta["present"] is False and got[0].meta["reason"], [m.meta for m in got]
    # 8K (7680x4320, 99.5 MB): the largest frame the wire allows
    huge = np.zeros((4320, 7680, 3), np.uint8)
    huge[1000:3000, 3000:5000] = 200
    st.send(Message("video_frame", "video", 1, now_ns(), 0.1, [huge]))
    del huge
    got = [m for m in st.receive(60.0, until=bool) if m.kind == "face_features"]
    assert len(got) == 1 and got[0].t_media_s == pytest.approx(0.1), [m.meta for m in got]
    assert st.proc.poll() is None
    # one row more is over the limit: dropped as malformed, before any allocation
    header = {
        "v": 1,
        "kind": "video_frame",
        "stream": "video",
        "seq": 2,
        "t_capture_ns": 1,
        "t_media_s": 0.2,
        "arrays": [{"dtype": "uint8", "shape": [4321, 7680, 3]}],
        "meta": {},
        "trace": {},
    }
    st.feed.send_multipart([b"video", json.dumps(header).encode(), b"\0" * 16])
    counters = st.counters(until=lambda c: c["malformed"] >= 1)
    assert counters["malformed"] == 1 and counters["errors"] == 0, counters
    assert st.proc.poll() is None


def test_audio_stage_takes_zero_length_and_drops_nan_inf_chunks(audio_stage):
    st = audio_stage
    sr, chunk = 16000, 1600
    t = 0.0
    st.send(Message("audio_chunk", "audio", 0, now_ns(), t, [np.zeros(0, np.float32)]))  # zero-length audio
    bad = []
    for i, value in enumerate((np.nan, np.inf, -np.inf)):
        a = (0.1 * np.sin(np.arange(chunk) / 7.0)).astype(np.float32)
        a[100 + i] = value
        bad.append(a)
    for i, a in enumerate(bad):
        st.send(Message("audio_chunk", "audio", 1 + i, now_ns(), t, [a]))
    good = (0.1 * np.sin(np.arange(sr) / 7.0)).astype(np.float32)
    for i in range(10):
        st.send(Message("audio_chunk", "audio", 4 + i, now_ns(), i * 0.1, [good[i * chunk : (i + 1) * chunk]]))
    got = [m for m in st.receive(10.0, until=lambda msgs: len(msgs) >= 9) if m.kind == "audio_features"]
    assert got, "no features after the bad chunks"
    for m in got:
        assert np.isfinite(m.arrays[0]).all() and np.isfinite(m.arrays[1]).all()
    counters = st.counters(until=lambda c: c["malformed"] >= 3)
    assert counters["malformed"] == 3 and counters["errors"] == 0, counters
    assert st.proc.poll() is None
    err = st.close()
    assert err.count("non-finite value") == 3, err[-2000:]  # one clear line per dropped chunk
