"""`sentistream bench soak` end to end, shortened to half a minute (the real soak is 60 min;
bench/results/soak.json holds the committed run)."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import sentistream_cmd


@pytest.mark.slow
def test_bench_soak_writes_rss_latency_and_missed_hops(tmp_path):
    proc = subprocess.run(
        sentistream_cmd("bench", "soak", "--minutes", "0.5", "--interval", "2", "--out", str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "soak.json").read_text())
    md = (tmp_path / "soak.md").read_text()
    assert data["minutes"] == 0.5 and "not the 60-minute soak" in data["note"] and "not the 60-minute soak" in md
    for key in ("date", "command", "cpu", "platform", "loadavg_start", "loadavg_end"):
        assert data["stamp"][key], key
    res = data["result"]
    assert set(res["rss"]) == {"supervisor", "media", "face", "audio_features", "asr", "fusion", "sink"}
    for r in res["rss"].values():
        assert r["peak_mb"] >= r["end_mb"] > 0 and r["slope_mb_per_min"] is not None
    assert res["latency"]["capture_to_emit_ms"]["n"] >= 100
    assert res["latency"]["slope_ms_per_min"] is not None
    hops = res["hops"]
    assert hops["expected"] == 120 and hops["missed"] == 0 and hops["duplicates"] == 0, hops
    assert data["verdict"]["zero_missed"] is True
    assert "restarts: none" in res["run_summary"] and "dropped: none" in res["run_summary"]
