"""The dashboard: its WebSocket bridge (fake and real engines) and the page in a real headless browser."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
import zmq
from conftest import interrupt_and_reap, sentistream_cmd

from sentistream.engine.dashboard import (
    DashboardBridge,
    parse_listen,
    stage_health,
    video_address,
)
from sentistream.engine.messages import Message, now_ns
from sentistream.engine.supervisor import free_tcp_port

websockets_sync = pytest.importorskip("websockets.sync.client")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


# ---- unit: address parsing and health ----------------------------------------------------------


def test_parse_listen_defaults_to_loopback():
    assert parse_listen("") == ("127.0.0.1", 8765)
    assert parse_listen(None) == ("127.0.0.1", 8765)
    assert parse_listen("9000") == ("127.0.0.1", 9000)
    assert parse_listen(":9000") == ("127.0.0.1", 9000)
    assert parse_listen("0.0.0.0:8765") == ("0.0.0.0", 8765)  # only when named explicitly
    assert parse_listen("[::1]:8765") == ("::1", 8765)
    for bad in ("host:", "127.0.0.1:http", "1:99999"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def _fake_stages() -> dict:
    proc = SimpleNamespace(pid=4242)
    return {
        "media": SimpleNamespace(proc=proc, ready=True, done=False, restart_due=None, restarts=0,
                                 definition=SimpleNamespace(kind="file_source", outputs=("video", "audio")),
                                 spec=SimpleNamespace(output_address="ipc:///tmp/x/media.sock"),
                                 last_stats={"counters": {"received": 0, "published": 10, "dropped": {}}}),
        "fusion": SimpleNamespace(proc=None, ready=False, done=False, restart_due=1.0, restarts=2,
                                  definition=SimpleNamespace(kind="fusion", outputs=("events",)),
                                  spec=SimpleNamespace(output_address="ipc:///tmp/x/fusion.sock"),
                                  last_stats={"counters": {"received": 5, "dropped": {"face": 3, "words": 1}}}),
    }  # fmt: skip


def test_stage_health_and_video_address():
    stages = _fake_stages()
    health = stage_health(stages)
    assert health["media"]["state"] == "running" and health["media"]["pid"] == 4242
    assert health["fusion"]["state"] == "restarting" and health["fusion"]["restarts"] == 2
    assert health["fusion"]["dropped"] == 4
    assert video_address(SimpleNamespace(stages=stages)) == "ipc:///tmp/x/media.sock"
    json.dumps(health)


# ---- the bridge against a fake engine (fast) -------------------------------------------------


def _event(seq: int, t1: float, score: float = 0.5) -> dict:
    return {
        "schema": "sentistream.event/1", "seq": seq, "window": {"t0": max(0.0, t1 - 3), "t1": t1},
        "score": score, "label": "positive" if score >= 0.5 else "neutral", "confidence": 0.3,
        "contributions": {"text": 0.5, "audio": 0.25, "vision": 0.25},
        "modalities": {"text": True, "audio": True, "vision": True},
        "transcript": "hello there", "partial": "and", "words": [],
        "new_words": [{"text": f"w{seq}", "start_s": t1 - 0.2, "end_s": t1 - 0.1}], "context": "hello there",
        "model": {"name": "fake", "placeholder": True, "checkpoint": ""},
        "latency_ms": {"text_encoder": 1.0, "model": 2.0, "fusion": 3.0, "capture_to_emit": 12.5},
        "t_emit_ns": now_ns(),
    }  # fmt: skip


@pytest.fixture()
def fake_engine():
    ctx = zmq.Context.instance()
    ev_addr = f"tcp://127.0.0.1:{free_tcp_port()}"
    vid_addr = f"tcp://127.0.0.1:{free_tcp_port()}"
    events, video = ctx.socket(zmq.PUB), ctx.socket(zmq.PUB)
    events.bind(ev_addr)
    video.bind(vid_addr)
    bridge = DashboardBridge("127.0.0.1", 0, events_address=ev_addr, video_address=vid_addr).start()
    try:
        yield SimpleNamespace(bridge=bridge, events=events, video=video)
    finally:
        bridge.stop()
        events.close(0)
        video.close(0)


def test_bridge_serves_page_and_forwards_events_frames_and_health(fake_engine):
    b = fake_engine.bridge
    assert b.port > 0 and b.url == f"http://127.0.0.1:{b.port}/"
    with urllib.request.urlopen(b.url, timeout=5) as r:
        html = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert "<canvas" in html and "/dashboard.js" in html and "://" not in html  # nothing from elsewhere
    for name in ("dashboard.js", "dashboard.css"):
        with urllib.request.urlopen(b.url + name, timeout=5) as r:
            assert r.status == 200 and len(r.read()) > 500
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(b.url + "nope", timeout=5)
    assert err.value.code == 404

    rgb = np.zeros((480, 640, 3), np.uint8)
    rgb[:, :320, 0] = 255  # left half red
    with websockets_sync.connect(f"ws://127.0.0.1:{b.port}/ws", open_timeout=5) as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello["type"] == "hello" and hello["video"] is True and hello["points"] == []
        got: dict[str, object] = {}
        seq = 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not {"event", "frame", "health"} <= set(got):
            seq += 1
            fake_engine.events.send_multipart(
                Message("event", "events", seq, now_ns(), seq * 0.25, meta=_event(seq, seq * 0.25)).encode()
            )
            fake_engine.video.send_multipart(Message("video_frame", "video", seq, now_ns(), seq * 0.25, [rgb]).encode())
            b.on_status(_fake_stages())
            b._last_health_check = 0.0
            try:
                m = ws.recv(timeout=0.3)
            except TimeoutError:
                continue
            if isinstance(m, bytes):
                got["frame"] = m
            else:
                d = json.loads(m)
                got.setdefault(d["type"], d)
        assert {"event", "frame", "health"} <= set(got), got.keys()
    ev = got["event"]
    assert ev["event"]["schema"] == "sentistream.event/1" and ev["delivery_ms"] >= 0
    assert got["health"]["stages"]["fusion"]["state"] == "restarting"
    import cv2

    img = cv2.imdecode(np.frombuffer(got["frame"], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (240, 320, 3)  # downscaled to 320 px wide
    assert img[120, 80, 2] > 200 and img[120, 240, 2] < 60  # colours survive (BGR: red on the left)
    with urllib.request.urlopen(b.url + "state.json", timeout=5) as r:
        state = json.loads(r.read())
    assert state["counts"]["events"] >= 1 and state["points"] and state["transcript"]


def test_bridge_refuses_foreign_origins_and_hosts(fake_engine):
    port = fake_engine.bridge.port
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as err:  # cross-site WebSocket hijacking
        websockets_sync.connect(f"ws://127.0.0.1:{port}/ws", origin="http://evil.example", open_timeout=5)
    assert err.value.response.status_code == 403
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": f"evil.example:{port}"})
    with pytest.raises(urllib.error.HTTPError) as err2:  # DNS rebinding
        urllib.request.urlopen(req, timeout=5)
    assert err2.value.code == 403
    # the page's own origin is fine
    with websockets_sync.connect(f"ws://127.0.0.1:{port}/ws", origin=f"http://127.0.0.1:{port}", open_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"


def test_dashboard_port_in_use_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            sentistream_cmd("run", "--source", "demo", "--dashboard", f"127.0.0.1:{port}", "--view", "none"),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 2
    assert "error: dashboard:" in proc.stderr and str(port) in proc.stderr


# ---- a real demo pipeline ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """`sentistream run --source demo --dashboard 127.0.0.1:PORT --view none`, looping until the tests are done."""
    port = free_tcp_port()
    log = tmp_path_factory.mktemp("dash") / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            sentistream_cmd("run", "--source", "demo", "--loop", "--dashboard", f"127.0.0.1:{port}", "--view", "none"),
            stdout=subprocess.DEVNULL, stderr=err, text=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    info = SimpleNamespace(proc=proc, url=url, port=port, log=log)
    try:
        yield info
    finally:
        interrupt_and_reap(proc)
        info.returncode = proc.returncode


def _state(url: str) -> dict:
    with urllib.request.urlopen(url + "state.json", timeout=5) as r:
        return json.loads(r.read())


def test_real_pipeline_feeds_the_websocket(engine):
    assert engine.proc.poll() is None, engine.log.read_text()[-3000:]
    assert f"dashboard on {engine.url}" in engine.log.read_text()
    with websockets_sync.connect(f"ws://127.0.0.1:{engine.port}/ws", open_timeout=10) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["type"] == "hello" and hello["video"] is True
        events, frames, health = [], [], [{"stages": hello["stages"]}]
        deadline = time.monotonic() + 180  # model loading takes a while on a small machine
        while time.monotonic() < deadline and (len(events) < 6 or len(frames) < 3):
            try:
                m = ws.recv(timeout=1)
            except TimeoutError:
                continue
            if isinstance(m, bytes):
                frames.append(m)
            else:
                d = json.loads(m)
                (events if d["type"] == "event" else health if d["type"] == "health" else []).append(d)
    assert len(events) >= 6 and len(frames) >= 3, (len(events), len(frames))
    assert all(f[:2] == b"\xff\xd8" for f in frames)  # JPEG
    t1 = [e["event"]["window"]["t1"] for e in events]
    assert t1 == sorted(t1)
    assert all(e["delivery_ms"] is not None and e["delivery_ms"] < 5000 for e in events)
    assert {"media", "face", "audio_features", "asr", "fusion", "sink"} <= set(health[-1]["stages"])
    assert health[-1]["stages"]["fusion"]["state"] == "running"
    assert health[-1]["stages"]["media"]["published"] > 0


def _webdriver(base: str, method: str, path: str, body: dict | None = None, timeout: float = 60) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"webdriver {method} {path}: {exc.code} {exc.read()[:500]!r}") from None


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver "
                    "(make system-deps, or apt-get install chromium chromium-driver)")  # fmt: skip
def test_page_in_headless_chromium_shows_live_events(engine, artifacts_dir, tmp_path):
    assert engine.proc.poll() is None, engine.log.read_text()[-3000:]
    port = free_tcp_port()
    driver_log = tmp_path / "chromedriver.log"
    driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}", f"--log-path={driver_log}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    session = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if _webdriver(base, "GET", "/status", timeout=2)["value"]["ready"]:
                    break
            except (OSError, AssertionError, KeyError):
                time.sleep(0.2)
        args = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--window-size=1280,1300", f"--user-data-dir={tmp_path / 'profile'}",
        ]  # fmt: skip
        caps = {
            "capabilities": {
                "alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}
            }
        }
        session = _webdriver(base, "POST", "/session", caps, timeout=90)["value"]["sessionId"]
        s = f"/session/{session}"
        _webdriver(base, "POST", s + "/url", {"url": engine.url})
        assert _webdriver(base, "GET", s + "/title")["value"] == "sentistream"
        probe = (
            "const s = window.__sentistream; if (!s) return null;"
            "return {connected: s.connected, events: s.events, frames: s.frames, drawn: s.drawnPoints,"
            " words: s.words.length, errors: s.errors, stages: Object.fromEntries("
            "   Object.entries(s.stages).map(([k, v]) => [k, v.state])),"
            " label: document.getElementById('label').textContent,"
            " transcript: document.getElementById('committed').textContent,"
            " latency: document.getElementById('lat-total').textContent,"
            " video: document.getElementById('video').naturalWidth};"
        )
        state = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = _webdriver(base, "POST", s + "/execute/sync", {"script": probe, "args": []})["value"]
            if state and state["events"] >= 12 and state["frames"] >= 4 and state["drawn"] >= 8 and state["words"] >= 3:
                break
            time.sleep(0.5)
        # the chart's canvas really has the score line on it (pixels of the line colours)
        pixels = _webdriver(base, "POST", s + "/execute/sync", {"script": (
            "const c = document.getElementById('chart'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
            "for (let i = 0; i < d.length; i += 4) { const [r, g, b] = [d[i], d[i+1], d[i+2]];"
            "  if ((r > 200 && g > 150 && b < 120) || (g > 180 && r < 120) || (r > 200 && g < 120)) n++; }"
            "return n;"), "args": []})["value"]  # fmt: skip
        shot = _webdriver(base, "GET", s + "/screenshot")["value"]
        png = base64.b64decode(shot)
        (artifacts_dir / "dashboard.png").write_bytes(png)
    finally:
        if session:
            try:
                _webdriver(base, "DELETE", f"/session/{session}", timeout=20)
            except (OSError, AssertionError):
                pass
        driver.terminate()
        try:
            driver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            driver.kill()
    assert state is not None, "the page did not load its script"
    assert state["errors"] == [], state["errors"]
    assert state["connected"], state
    assert state["events"] >= 12 and state["drawn"] >= 8, state  # the chart receives live events
    assert state["frames"] >= 4 and state["video"] == 320, state  # the preview shows JPEG frames
    assert state["words"] >= 3 and state["transcript"].strip(), state
    assert state["label"] in ("positive", "negative", "neutral"), state
    assert "ms" in state["latency"] and "–" not in state["latency"], state
    assert state["stages"].get("fusion") == "running", state
    assert pixels > 50, pixels
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_engine_stops_cleanly_with_the_dashboard(engine):
    """Last in the module: SIGINT ends the run (exit 0) and frees the dashboard's port."""
    proc = engine.proc
    assert proc.poll() is None, engine.log.read_text()[-3000:]
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 0, engine.log.read_text()[-3000:]
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", engine.port))  # the port is free again
