"""`--pace fast` on real media through the real graph: the source is flow-controlled by the events
(nothing is dropped, however far the file could run ahead) and fusion cuts each window only
once every input has delivered it, so each window holds the words spoken in it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, read_jsonl, sentistream_cmd

HOP = 0.25


def _child_pid(parent: int, stage: str, timeout_s: float = 60.0) -> int:
    """The pid of the graph's stage process ``stage`` (a child of the run's process)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"sentistream.engine.worker" in cmdline and stage.encode() in cmdline:
                return int(entry.name)
        time.sleep(0.1)
    raise AssertionError(f"no {stage} stage process under pid {parent}")


def _run_with_asr_paused(cmd: list[str], out: Path, pause_s: float) -> subprocess.CompletedProcess:
    """Run the graph and freeze its ASR process for pause_s once the first event is out: a
    recogniser starved of CPU on a loaded machine, made repeatable."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        asr = _child_pid(proc.pid, "asr")
        deadline = time.monotonic() + 120
        while not (out.exists() and out.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(asr, signal.SIGSTOP)
        time.sleep(pause_s)
        os.kill(asr, signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module", params=["demo", "audio_only", "asr_paused"])
def fast_run(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"fast_{request.param}")
    source = "demo"
    if request.param == "audio_only":  # the demo's speech without its video track
        source = str(d / "speech.wav")
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-y",
                "-i",
                str(REPO / "assets" / "demo.mp4"),
                "-vn",
                "-ac",
                "1",
                "-ar",
                "16000",
                source,
            ],
            check=True,
            timeout=60,
        )
    out = d / "events.jsonl"
    cmd = sentistream_cmd("run", "--source", source, "--pace", "fast", "--view", "none", "--jsonl", str(out))
    if request.param == "asr_paused":
        # Longer than fusion's patience with an idle input (COMPLETE_STALL_S): a recogniser that is
        # behind is waited for, so no window is cut before its words.
        proc = _run_with_asr_paused(cmd, out, pause_s=4.0)
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return request.param, proc, read_jsonl(out) if out.exists() else []


def test_nothing_is_dropped_and_no_input_stalls(fast_run, demo_meta):
    kind, proc, events = fast_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = [line for line in proc.stderr.splitlines() if re.match(r"\d+ events; ", line)]
    assert summary and "dropped: none" in summary[-1] and "malformed: none" in summary[-1], proc.stderr[-3000:]
    assert "made no progress" not in proc.stderr, proc.stderr[-3000:]
    ends = [e["window"]["t1"] for e in events if not e.get("final")]
    assert ends == [pytest.approx(HOP * (i + 1)) for i in range(round(demo_meta["duration_s"] / HOP))]
    if kind == "audio_only":
        assert not any(e["modalities"]["vision"] for e in events)
    else:
        assert sum(e["modalities"]["vision"] for e in events) > len(events) // 2


def test_each_window_holds_the_words_spoken_in_it(fast_run, demo_meta):
    _, proc, events = fast_run
    assert events, proc.stderr[-3000:]
    # every word the recogniser committed, as the events reported them
    spoken = {(w["text"], w["start_s"], w["end_s"]) for e in events for w in e["words"] + e["new_words"]}
    assert len(spoken) >= 20, spoken
    for e in events:
        if e.get("final"):
            continue
        t0, t1 = e["window"]["t0"], e["window"]["t1"]
        want = sorted(w for w in spoken if w[2] > t0 and w[1] <= t1)
        got = sorted((w["text"], w["start_s"], w["end_s"]) for w in e["words"])
        assert got == want, (e["window"], got, want)
    # and the words are the demo's sentences
    said = " ".join(s["text"] for s in demo_meta["sentences"]).lower()
    heard = [re.sub(r"[^a-z']", "", w[0].lower()) for w in sorted(spoken, key=lambda w: w[1])]
    assert sum(w in said for w in heard if w) >= 0.8 * len(heard), heard


@pytest.mark.parametrize("pace, kind", [("fast", "file"), ("fast", "demo"), ("realtime", "file"), ("fast", "webcam")])
def test_only_a_fast_file_replay_is_flow_controlled(pace, kind):
    from sentistream.engine.config import config_from_dict
    from sentistream.pipelines.standard import standard_pipeline

    cfg = config_from_dict({"source": {"kind": kind, "pace": pace, "path": "x.mp4"}})
    stages = {s.name: s for s in standard_pipeline(cfg).stages}
    fast_file = pace == "fast" and kind != "webcam"
    source = stages["media"] if kind != "webcam" else stages["camera"]
    assert source.inputs == (("events",) if fast_file else ())
    assert stages["fusion"].params.get("complete_windows", False) is fast_file
