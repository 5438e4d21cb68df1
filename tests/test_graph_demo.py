"""The whole graph as real processes on the bundled demo clip (real media, real models)."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest
from conftest import read_jsonl, sentistream_cmd

from sentistream.bench.procs import descendants, pid_alive, stage_pids

HOP = 0.25


def _words(events: list[dict], key: str = "new_words") -> list[str]:
    return [re.sub(r"[^a-z']", "", w["text"].lower()) for e in events for w in e.get(key, [])]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "events.jsonl"
    proc = subprocess.run(
        sentistream_cmd("run", "--source", "demo", "--jsonl", str(out), "--view", "lines"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, read_jsonl(out) if out.exists() else []


def test_demo_exits_cleanly_and_prints_events(demo_run):
    proc, events = demo_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("latency") >= len(events) - 5  # the terminal view printed them


def test_one_event_per_hop_windows_non_decreasing(demo_run, demo_meta):
    _, events = demo_run
    expected = round(demo_meta["duration_s"] / HOP)
    assert abs(len([e for e in events if not e.get("final")]) - expected) <= 1, len(events)
    # a closing event flagged "final" may repeat the last window to carry late words
    hops = [e for e in events if not e.get("final")]
    assert len(events) - len(hops) <= 1 and all(e.get("final") for e in events[len(hops) :])
    t1 = [e["window"]["t1"] for e in hops]
    assert all(b - a == pytest.approx(HOP, abs=1e-6) for a, b in zip(t1, t1[1:])), t1
    t0 = [e["window"]["t0"] for e in events]
    assert t0 == sorted(t0)
    assert all(e["window"]["t1"] - e["window"]["t0"] <= 3.0 + 1e-6 for e in events)


def test_every_event_has_schema_fields_and_latency_breakdown(demo_run):
    _, events = demo_run
    for e in events:
        assert -3.0 <= e["score"] <= 3.0
        assert e["label"] in ("negative", "neutral", "positive")
        assert 0.0 <= e["confidence"] <= 1.0
        assert set(e["contributions"]) == {"text", "audio", "vision"}
        assert abs(sum(e["contributions"].values()) - 1.0) < 1e-2
        # attributions: what masking each modality changes; a readout that is absent changed nothing
        attr = e["attributions"]
        readout = {"text": e["readouts"]["text"], "audio": e["readouts"]["voice"], "vision": e["readouts"]["face"]}
        for m in ("text", "audio", "vision"):
            if readout[m] is None:
                assert attr[m] == 0.0, (m, e)
        lat = e["latency_ms"]
        assert lat["capture_to_emit"] >= 0 and lat["model"] >= 0
        if e["window"]["t1"] >= 1.0:  # the very first windows may close before a stage's first output
            assert "face" in lat and "capture_to_emit" in lat["face"] and "face" in lat["face"]
            assert "audio_feat" in lat and "audio_features" in lat["audio_feat"]
        assert e["model"]["name"]
    # the words move the demo's score, and the smiling face does too where the words are weak
    assert max(abs(e["attributions"]["text"]) for e in events) > 1.0
    assert max(abs(e["attributions"]["vision"]) for e in events) > 0.1
    # the face is visible in the demo: nearly every window after the first has vision
    assert sum(e["modalities"]["vision"] for e in events) >= 0.9 * len(events)


def test_transcripts_contain_the_spoken_words(demo_run, demo_meta):
    _, events = demo_run
    said = _words(events)  # every committed word is carried once, by the event after its commit
    for word in ("love", "wonderful", "terrible", "awful", "brilliant", "happy", "horrible", "disappointed"):
        assert word in said, (word, said)
    spoken = " ".join(s["text"] for s in demo_meta["sentences"]).lower().split()
    assert len(said) >= 0.8 * len(spoken)
    # word times lie where the demo speaks them, and the model's text context carries them
    for e in events:
        for w in e["new_words"]:
            assert 0.0 <= w["start_s"] <= w["end_s"] <= demo_meta["duration_s"] + 0.1
    # A committed word reaches the model: the event that carries it has it in its text context,
    # unless the recogniser committed it later than the text look-back (possible under heavy load).
    lookback = 8.0
    carried = [(e, w) for e in events for w in e["new_words"] if e["window"]["t1"] - w["end_s"] < lookback - 0.5]
    assert carried, "every word was committed later than the look-back"
    for e, w in carried:
        assert w["text"].strip() in e["context"], (w, e["context"])


def test_low_latency_profile_ends_a_window_at_every_frame(tmp_path, demo_meta):
    out = tmp_path / "events.jsonl"
    proc = subprocess.run(
        sentistream_cmd("run", "--source", "demo", "--config", "low_latency", "--jsonl", str(out), "--view", "none"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = read_jsonl(out)
    hops = [e for e in events if not e.get("final")]
    fps = 15.0
    frames = demo_meta["duration_s"] * fps
    # one window per face frame (a few while the face stage starts or lags are led by audio)
    assert 0.85 * frames <= len(hops) <= frames + 5, (len(hops), frames)
    t1 = [e["window"]["t1"] for e in hops]
    assert all(b - a >= 0.05 - 1e-6 for a, b in zip(t1[:-1], t1[1:-1])), t1  # the last closes the stream
    on_a_frame = [t for t in t1 if abs(t * fps - round(t * fps)) < 1e-3]
    assert len(on_a_frame) >= 0.8 * len(hops)  # the file source stamps frame k at k / fps
    # the frame that ended the window is in it: the newest face input is the window's own end
    with_face = [e for e in hops if e["window"]["t1"] >= 1.0 and e["modalities"]["vision"]]
    assert len(with_face) >= 0.8 * len(hops)
    said = _words(events)
    assert "wonderful" in said and "disappointed" in said, said
    # the closing event (words from the final decode) was scored with those words encoded
    for e in events:
        if e.get("final"):
            assert all(w["text"].strip() in e["context"] for w in e["new_words"]), (e["new_words"], e["context"])


@pytest.mark.parametrize("pace", ["realtime", "fast"])
def test_sigkill_a_stage_restarts_it_and_events_resume(tmp_path, pace):
    """fast: while fusion is down no event comes, so the held source must stop waiting for them
    (it hung the run before) and events resume after the restart."""
    out = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        sentistream_cmd("run", "--source", "demo", "--pace", pace, "--jsonl", str(out), "--view", "none"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and (not out.exists() or len(read_jsonl(out)) < 12):
            time.sleep(0.2)
        before = read_jsonl(out)
        assert len(before) >= 12, "no events before the kill"
        victim = _stage_pid(proc.pid, "fusion")
        import os

        os.kill(victim, signal.SIGKILL)
        killed_at = before[-1]["window"]["t1"]
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    events = read_jsonl(out)
    after = [e for e in events if e["window"]["t1"] > killed_at + 1.0]
    assert len(after) >= 8, "events did not resume after the restart"
    t1 = [e["window"]["t1"] for e in events]
    assert t1 == sorted(t1), "windows went backwards after the restart"
    assert "restarts: {'fusion': 1}" in stderr


def _stage_pid(supervisor_pid: int, stage: str) -> int:
    pids = stage_pids(supervisor_pid, stage)
    assert pids, f"no process for stage {stage}"
    return pids[0]


def test_ctrl_c_leaves_no_process_behind(tmp_path):
    """Also runs the graph over tcp:// (loopback) instead of ipc://."""
    out = tmp_path / "events.jsonl"
    conf = tmp_path / "tcp.toml"
    conf.write_text('[transport]\ntransport = "tcp"\n')
    proc = subprocess.Popen(
        sentistream_cmd("run", "--source", "demo", "--config", str(conf), "--jsonl", str(out), "--view", "none"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and (not out.exists() or len(read_jsonl(out)) < 4):
            time.sleep(0.2)
        kids = descendants(proc.pid)
        assert len(kids) >= 6, kids  # media, face, audio_features, asr, fusion, sink
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    time.sleep(0.5)
    left = [p for p in kids if pid_alive(p)]
    assert not left, f"processes left behind: {left}"
