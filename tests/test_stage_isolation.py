"""One stage in its own process, driven over real sockets by the test (pipecat-style isolation)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from sentistream.engine.config import EngineConfig
from sentistream.engine.messages import Message, decode, now_ns
from sentistream.engine.stage import StageSpec


def _free(ctx, kind):
    s = ctx.socket(kind)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    return s, f"tcp://127.0.0.1:{port}"


@pytest.fixture
def face_stage():
    from skimage.data import astronaut

    ctx = zmq.Context.instance()
    feed, feed_addr = _free(ctx, zmq.PUB)
    control, control_addr = _free(ctx, zmq.PULL)
    command, command_addr = _free(ctx, zmq.PUB)
    probe = ctx.socket(zmq.PUB)
    out_port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    out_addr = f"tcp://127.0.0.1:{out_port}"
    spec = StageSpec(
        name="face",
        kind="face",
        inputs={"video": feed_addr},
        output_address=out_addr,
        control_address=control_addr,
        command_address=command_addr,
        config=EngineConfig().to_dict(),
        params={"outputs": ["face"]},
    )
    proc = subprocess.Popen([sys.executable, "-m", "sentistream.engine.worker", spec.to_json()])
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"face")
    sub.connect(out_addr)
    deadline = time.monotonic() + 120
    ready = False
    while time.monotonic() < deadline and not ready:
        if control.poll(500):
            ready = json.loads(control.recv()).get("type") == "ready"
    assert ready, "face stage never became ready"
    time.sleep(0.3)
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, 64:576] = astronaut()[:480]
    yield proc, feed, sub, control, frame
    proc.terminate()
    proc.wait(10)
    for s in (feed, control, command, sub):
        s.close(linger=0)


def test_malformed_message_is_logged_dropped_and_stage_goes_on(face_stage):
    proc, feed, sub, control, frame = face_stage
    garbage = [
        [b"video", b"this is not json"],
        [b"video", json.dumps({"v": 1, "kind": "video_frame", "stream": "video", "seq": 0, "t_capture_ns": 1,
                               "t_media_s": 0.0, "arrays": [{"dtype": "uint8", "shape": [480, 640, 3]}]}).encode(),
         b"short"],
        [b"video", b'{"v":1,"kind":"video_frame","stream":"video","seq":0,"t_capture_ns":1,"t_media_s":0,'
                   b'"arrays":[{"dtype":"object","shape":[1]}]}', b"x"],
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
