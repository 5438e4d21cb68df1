"""`extract` runs the live stages' code offline: parity with the live graph, MMSA layout, resume, bad files."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess

import numpy as np
import pytest
import zmq
from conftest import REPO, sentistream_cmd

from sentistream.engine.config import load_config
from sentistream.engine.messages import decode
from sentistream.engine.supervisor import Supervisor
from sentistream.perception.extract import ClipSpec, FeaturePipeline
from sentistream.pipelines.standard import standard_pipeline

DEMO = REPO / "assets" / "demo.mp4"
SPAN_S = 6.0
# Same code on the same decoded items: features agree to float round-off. The live run
# turns video conflation off: mediapipe's tracking mode seeds each frame's face region
# from the previous landmarks, so a frame skipped live (latest wins, the default) would
# shift every later frame's landmarks slightly (up to 0.06 measured).
AUDIO_TOL = 1e-5
FACE_TOL = 1e-4


def _live_features(span_s: float):
    cfg = load_config(
        overrides={"source": {"kind": "demo", "duration_s": span_s}, "transport": {"conflate_video": False}}
    )
    sup = Supervisor(standard_pipeline(cfg), cfg)
    ctx = zmq.Context.instance()
    subs = {}
    for stage, stream in (("face", "face"), ("audio_features", "audio_feat")):
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.SUBSCRIBE, stream.encode())
        s.setsockopt(zmq.RCVHWM, 100000)
        s.connect(sup.stages[stage].spec.output_address)
        subs[stream] = s
    got = {"face": [], "audio_feat": []}

    def drain(_stages=None):
        for stream, s in subs.items():
            while True:
                try:
                    msg = decode(s.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
                if msg.kind != "eos":
                    got[stream].append(msg)

    result = sup.run(on_status=drain)
    drain()
    for s in subs.values():
        s.close(linger=0)
    assert result.exit_code == 0, result.error
    return got, result


@pytest.fixture(scope="module")
def offline():
    return FeaturePipeline(load_config()).run(ClipSpec("demo", str(DEMO), 0.0, SPAN_S))


def test_live_graph_and_extract_give_the_same_features(offline):
    live, result = _live_features(SPAN_S)
    # audio: every frame the live stage published is in the offline output, same values
    live_t = np.concatenate([m.arrays[1] for m in live["audio_feat"]])
    live_x = np.concatenate([m.arrays[0] for m in live["audio_feat"]])
    index = {round(t, 6): i for i, t in enumerate(offline.audio_times)}
    rows = [index[round(t, 6)] for t in live_t]
    assert len(rows) >= 0.95 * SPAN_S * 100
    np.testing.assert_allclose(live_x, offline.audio[rows], atol=AUDIO_TOL)
    # face: every frame, matched by time
    off_index = {round(t, 6): i for i, t in enumerate(offline.vision_times)}
    live_face = {round(m.t_media_s, 6): m.arrays[0] for m in live["face"]}
    times = sorted(live_face)
    assert times == sorted(round(t, 6) for t in offline.vision_times), "the live stage missed frames"
    live_vision = np.stack([live_face[t] for t in times])
    np.testing.assert_allclose(live_vision, offline.vision[[off_index[t] for t in times]], atol=FACE_TOL)


def test_offline_transcript_and_text_tokens(offline):
    said = offline.raw_text.lower()
    assert "love" in said and "wonderful" in said
    assert offline.text.shape[0] >= 5 and offline.text.shape[1] == 384
    assert offline.vision_present.mean() > 0.95


def test_extract_csv_to_mmsa_pickle_resumes_and_skips_bad_files(tmp_path):
    shutil.copy(DEMO, tmp_path / "demo.mp4")
    (tmp_path / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "labels.csv").write_text(
        "path,start,end,label,split\ndemo.mp4,0,4,2.5,train\ndemo.mp4,4.5,8.5,-2.0,test\nbroken.mp4,0,3,1.0,test\n"
    )
    out = tmp_path / "data.pkl"
    cmd = sentistream_cmd("extract", str(tmp_path / "labels.csv"), "--out", str(out), "--quiet")
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary == {"clips": 3, "extracted": 2, "resumed": 0, "out": str(out), "failed": 1}
    assert "skipped" in first.stderr and "broken.mp4" in first.stderr
    with open(out, "rb") as f:  # our own file, written by the test: MMSA's format is a pickle
        data = pickle.load(f)
    assert set(data) == {"train", "test"}
    for split, label in (("train", 2.5), ("test", -2.0)):
        d = data[split]
        for key in (
            "text",
            "audio",
            "vision",
            "audio_lengths",
            "vision_lengths",
            "raw_text",
            "id",
            "regression_labels",
        ):
            assert key in d, key
        assert d["regression_labels"].tolist() == [label]
        assert d["audio"].shape[0] == 1 and d["audio_lengths"][0] > 300
        assert d["vision_lengths"][0] >= 55
    assert "love" in data["train"]["raw_text"][0].lower()
    assert "terrible" in data["test"]["raw_text"][0].lower()
    # a rerun (as after an interruption) reuses the finished clips
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert json.loads(second.stdout.strip().splitlines()[-1])["resumed"] == 2
