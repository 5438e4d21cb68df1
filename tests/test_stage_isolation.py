"""One stage in its own process, driven over real sockets by the test (pipecat-style isolation)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from sentistream.engine.harness import IsolatedStage
from sentistream.engine.messages import Message, decode, now_ns


@pytest.fixture
def face_stage():
    from skimage.data import astronaut

    stage = IsolatedStage("face", "video", "face", capture_stderr=False)
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, 64:576] = astronaut()[:480]
    yield stage.proc, stage.feed, stage.sub, stage.control, frame
    stage.close()


def test_malformed_message_is_logged_dropped_and_stage_goes_on(face_stage):
    proc, feed, sub, control, frame = face_stage
    garbage = [
        [b"video", b"this is not json"],
        [
            b"video",
            json.dumps(
                {
                    "v": 1,
                    "kind": "video_frame",
                    "stream": "video",
                    "seq": 0,
                    "t_capture_ns": 1,
                    "t_media_s": 0.0,
                    "arrays": [{"dtype": "uint8", "shape": [480, 640, 3]}],
                }
            ).encode(),
            b"short",
        ],
        [
            b"video",
            b'{"v":1,"kind":"video_frame","stream":"video","seq":0,"t_capture_ns":1,"t_media_s":0,'
            b'"arrays":[{"dtype":"object","shape":[1]}]}',
            b"x",
        ],
    ]
    for g in garbage:
        feed.send_multipart(g)
    good = Message("video_frame", "video", 1, now_ns(), 0.5, [frame])
    deadline = time.monotonic() + 30
    got = None
    while time.monotonic() < deadline and got is None:
        feed.send_multipart(good.encode())
        if sub.poll(1000):
            got = decode(sub.recv_multipart())
    assert got is not None, "stage produced nothing after malformed input"
    assert proc.poll() is None, "stage died"
    assert got.kind == "face_features" and got.meta["present"] is True
    assert "face" in got.trace and got.t_capture_ns == good.t_capture_ns
    # the stage reports the malformed messages it dropped
    malformed = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and malformed < 3:
        if control.poll(500):
            body = json.loads(control.recv())
            if body.get("type") == "stats":
                malformed = body["counters"]["malformed"]
    assert malformed == 3


# --------------------------------------------------------------------------- in process
def _chunks(seconds: float, t0: float = 0.0, sr: int = 16000, chunk: int = 1600) -> list[Message]:
    signal = (0.1 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * sr)) / sr)).astype(np.float32)
    return [
        Message("audio_chunk", "audio", i, now_ns(), t0 + i * chunk / sr, [signal[i * chunk : (i + 1) * chunk]])
        for i in range(len(signal) // chunk)
    ]


def test_run_stage_drives_the_audio_feature_stage_in_process():
    """run_stage: the stage's own hooks, no sockets; a gap in the media clock restarts the frame
    grid instead of stitching two chunks into one frame, and eos flushes then forwards."""
    from sentistream.engine.harness import run_stage, stage_spec
    from sentistream.engine.stages.audio_features import AudioFeatureStage

    stage = AudioFeatureStage(stage_spec("audio_features", inputs=["audio"], outputs=["audio_feat"]))
    inputs = _chunks(1.0) + _chunks(0.5, t0=5.0) + [Message("eos", "audio", 0, now_ns(), 5.5)]
    run = run_stage(stage, inputs)
    feats = run.of_kind("audio_features")
    assert [m.kind for m in run.published][-1] == "eos" and run.published[-1].stream == "audio_feat"
    times = np.concatenate([m.arrays[1] for m in feats])
    assert np.all(np.diff(times) > 0)  # frames in order, none repeated
    assert times.min() < 0.05 and times.max() > 5.4  # the first chunk's frames and the flushed tail
    assert not np.any((times > 1.05) & (times < 5.0))  # nothing invented in the gap
    assert feats[0].arrays[0].shape[1] == stage.extractor.dim
    assert run.counters["errors"] == 0 and run.counters["received"] == len(inputs) - 1


def test_stage_params_are_typed_and_refuse_unknown_keys():
    from sentistream.engine.stage import StageParams, StageSpec

    spec = StageSpec.from_json(
        StageSpec("sink", "sink", {}, "", "", "", {}, params={"jsonl": "/tmp/x.jsonl"}).to_json()
    )
    assert isinstance(spec.params, StageParams) and spec.params.jsonl == "/tmp/x.jsonl"
    with pytest.raises(ValueError, match="unknown stage parameter.*jsnol"):
        StageParams.from_dict({"jsnol": "/tmp/x.jsonl"})
