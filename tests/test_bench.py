"""The latency and throughput benches: registration, metric definitions, result files (tiny runs)."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import sentistream_cmd

from sentistream.bench.latency import pipeline_metrics


def test_bench_subcommands_are_registered():
    out = subprocess.run(sentistream_cmd("bench", "--help"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "latency" in out.stdout and "throughput" in out.stdout


def _run(frames, events, t0_ns=10**9):
    return {
        "events": events,
        "frames": frames,
        "length_s": 3.0,
        "t0_ns": t0_ns,
        "exit_code": 0,
        "error": "",
        "restarts": {},
        "wall_s": 1.0,
        "minutes": 0.0,
    }


def test_pipeline_metrics_definitions():
    """Frames at 15 fps captured in real time; windows every 250 ms cut 100 ms early (the audio
    clock leads), so the frames of a window's last 100 ms land in the next window."""
    t0 = 10**9
    frames = [(k / 15, t0 + int(k / 15 * 1e9)) for k in range(1, 60)]
    events = []
    for n in range(1, 16):
        t1 = n * 0.25
        emit = t0 + int((t1 - 0.1) * 1e9) + 5_000_000
        newest = [f for f in frames if f[1] <= emit - 3_000_000][-1]
        events.append(
            {
                "seq": n,
                "window": {"t0": max(0.0, t1 - 3), "t1": t1},
                "t_emit_ns": emit,
                "latency_ms": {"face": {"capture_to_emit": (emit - newest[1]) / 1e6}, "model": 1.0},
                "new_words": [{"text": "hi", "start_s": t1 - 0.5, "end_s": t1 - 0.3}] if n == 8 else [],
            }
        )
    events.append({**events[-1], "seq": 99, "final": True, "new_words": [{"text": "x", "start_s": 0, "end_s": 3.0}]})
    m = pipeline_metrics(_run(frames, events))
    cdf = m.pop("_cdf")
    assert min(cdf["frame_to_event"]) > 0 and min(cdf["newest_frame_to_event"]) > 0
    # every frame waits for the first window that really held it: at most a hop + the 100 ms lead
    assert max(cdf["frame_to_event"]) <= 250 + 100 + 5 + 1
    assert m["newest_frame_to_event_ms"]["max"] <= 67 + 5 + 1
    # a word ending at 1.7 s, carried by the event emitted at 2.0 - 0.1 + 0.005 s: 205 ms
    assert cdf["speech_end_to_text"] == [pytest.approx(205.0, abs=0.01)]  # end-of-stream event left out
    assert m["events"] == 16


def test_latency_bench_writes_results(tmp_path):
    out = subprocess.run(
        sentistream_cmd(
            "bench",
            "latency",
            "--skip-pipeline",
            "--backends",
            "eager,tensorrt",
            "--models",
            "almt",
            "--budget-s",
            "0.05",
            "--out-dir",
            str(tmp_path),
            "--smoke",
            "--tag",
            "test",
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "latency-test-smoke.json").read_text())
    assert res["stamp"]["smoke"] and res["stamp"]["versions"]["torch"]
    assert set(res["fusion_batch1_p50_ms"]) == {"live", "mosi"}
    assert res["fusion_batch1_p50_ms"]["live"]["eager"] > 0
    assert set(res["fusion_windows_per_s"]["eager"]) == {"1", "4", "32", "256"}
    occ = res["fusion_occlusion_cost"]["eager"]  # an event's attributions: batch 4 against batch 1
    assert occ["batch4_p50_ms"] > 0 and occ["ratio"] == round(occ["batch4_p50_ms"] / occ["batch1_p50_ms"], 2)
    trt = res["fusion"]["live"][0]["backends"]["tensorrt"]
    assert trt["available"] is False and "torch_tensorrt" in trt["reason"]
    assert res["fusion"]["mosi"][0]["shapes"] == {"text": [50, 768], "audio": [375, 5], "vision": [500, 20]}
    assert (tmp_path / "latency-test-smoke.md").read_text().startswith("# Latency bench")
    assert (tmp_path / "latency-test-smoke.png").stat().st_size > 1000


def test_throughput_step_against_a_server():
    import torch

    from sentistream.bench.throughput import run_step
    from sentistream.engine.backends import EagerBackend, ShapePlan, model_fingerprint
    from sentistream.engine.fusion_server import FusionServer
    from sentistream.models import DEFAULT_DIMS, build

    torch.manual_seed(0)
    model = build("almt", DEFAULT_DIMS).eval()
    info = {"model": "almt", "fingerprint": model_fingerprint(model), "dims": list(model.dims), "backend": "eager"}
    server = FusionServer(
        EagerBackend(model), info, "tcp://127.0.0.1:0", max_batch=8, plan=ShapePlan((16, 32, 64), (60,), (45,), 8)
    ).start()
    try:
        r = run_step(server.address, 3, 1.0, 5000.0, list(model.dims), warmup_s=0.3)
    finally:
        server.close()
    assert r["sessions"] == 3 and r["windows"] >= 9
    assert r["answered"] == r["windows"] and r["missed"] == 0 and r["errors"] == 0
    assert r["within_budget"] and r["p95_ms"] > 0
