"""The fusion server: dynamic batching across sessions, isolation, errors, the CLI and the live glue."""

from __future__ import annotations

import signal
import subprocess
import time

import numpy as np
import pytest
import torch
import zmq
from conftest import sentistream_cmd

from sentistream.engine.backends import EagerBackend, ShapePlan, example_inputs_for, model_fingerprint
from sentistream.engine.config import FusionConfig
from sentistream.engine.fusion_client import RemoteFusion
from sentistream.engine.fusion_server import FusionServer
from sentistream.engine.fusion_wire import RemoteFusionError, inputs_to_arrays
from sentistream.engine.messages import Message, encode, now_ns
from sentistream.engine.supervisor import free_tcp_port
from sentistream.models import DEFAULT_DIMS, build

PLAN = ShapePlan((16, 32), (60,), (45,), max_batch=8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build("almt", DEFAULT_DIMS).eval()


def _info(model) -> dict:
    return {
        "model": "almt",
        "checkpoint": "",
        "placeholder": True,
        "fingerprint": model_fingerprint(model),
        "dims": list(model.dims),
        "backend": "eager",
        "reason": "test",
    }


def _server(model, **kw) -> FusionServer:
    kw.setdefault("max_batch", 8)
    kw.setdefault("max_queue_delay_us", 20_000)
    return FusionServer(EagerBackend(model), _info(model), "tcp://127.0.0.1:0", plan=PLAN, **kw)


def _window(model, seed: int, text_len: int = 20):
    return example_inputs_for(model, PLAN, 1, (text_len, 60, 45), seed=seed)


def test_results_match_local_and_requests_are_batched(model):
    server = _server(model).start()
    clients = [RemoteFusion(server.address, timeout_s=30) for _ in range(6)]
    try:
        info = clients[0].info()
        assert info["fingerprint"] == model_fingerprint(model) and info["dims"] == list(model.dims)
        xs = [_window(model, i, text_len=5 + 4 * i) for i in range(6)]
        ids = [c.submit(x) for c, x in zip(clients, xs)]  # six sessions, different lengths, in flight
        got = {}
        deadline = time.monotonic() + 60
        while len(got) < 6 and time.monotonic() < deadline:
            for i, c in enumerate(clients):
                for rid, out, meta in c.collect(0.01):
                    assert rid == ids[i]
                    got[i] = (out, meta)
        assert len(got) == 6
        eager = EagerBackend(model)
        for i, (out, _meta) in got.items():
            ref = eager(xs[i])
            assert torch.allclose(out.score, ref.score, atol=1e-5)
            assert torch.allclose(out.contributions, ref.contributions, atol=1e-5)
        assert max(meta["batch"] for _, meta in got.values()) > 1  # windows shared a forward pass
        out = clients[0](xs[0])  # the synchronous path
        assert torch.allclose(out.score, eager(xs[0]).score, atol=1e-5)
        stats = clients[1].info(refresh=True)["stats"]
        assert stats["windows"] == 7 and stats["batches"] < 7
    finally:
        for c in clients:
            c.close()
        server.close()


def _dealer(address: str) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(address)
    return s


def _request(model, seq: int, seed: int = 0) -> list:
    x = _window(model, seed)
    return encode(Message("fusion_request", "fusion", seq, now_ns(), 0.0, inputs_to_arrays(x), {"op": "infer"}))


def _receive_all(server: FusionServer, n: int) -> None:
    deadline = time.monotonic() + 30
    while server.stats.requests + server.stats.overloaded < n and time.monotonic() < deadline:
        server.sock.poll(50)
        server._receive()


def test_a_flooding_session_does_not_starve_another(model):
    """Batches are filled round-robin across sessions: a session with 40 queued requests gets one
    slot per turn, and a session that sends one request later is in the very next batch."""
    server = _server(model, max_batch=4, max_queue_per_session=40)
    flood, calm = _dealer(server.address), _dealer(server.address)
    try:
        for i in range(40):
            flood.send_multipart(_request(model, i))
        _receive_all(server, 40)
        # beyond its bound, the flood's requests are refused at once, never queued
        for i in range(5):
            flood.send_multipart(_request(model, 2000 + i))
        _receive_all(server, 45)
        assert server.stats.overloaded == 5
        calm.send_multipart(_request(model, 1000))
        _receive_all(server, 46)
        batch = server._take_batch()
        assert len(batch) == 4
        assert sum(r.msg.seq == 1000 for r in batch) == 1  # the calm session is in the first batch
        assert server.pending_windows == 37
        replies = []
        while len(replies) < 5 and flood.poll(1000):
            replies.append(flood.recv_multipart())
        assert all(b"overloaded" in r[1] for r in replies)
    finally:
        flood.close()
        calm.close()
        server.close()


def test_a_session_that_never_reads_delays_no_one(model):
    server = _server(model, max_batch=8, max_queue_delay_us=1000).start()
    deaf = _dealer(server.address)  # sends, never receives
    # The client's own deadline is the check: a server held up by the deaf session would let it
    # pass and the call would raise (how fast the answer comes is bench/throughput's business).
    client = RemoteFusion(server.address, timeout_s=20)
    try:
        for i in range(30):
            deaf.send_multipart(_request(model, i))
        x = _window(model, 7)
        out = client(x)
        assert torch.allclose(out.score, EagerBackend(model)(x).score, atol=1e-5)
    finally:
        deaf.close()
        client.close()
        server.close()


def test_malformed_and_invalid_requests_get_errors_and_the_server_goes_on(model):
    server = _server(model).start()
    raw = _dealer(server.address)
    client = RemoteFusion(server.address, timeout_s=30)
    try:
        raw.send_multipart([b"fusion", b"{not json"])
        assert raw.poll(10_000)
        reply = raw.recv_multipart()
        assert b"malformed" in reply[1]
        bad = [np.zeros((1, 5, 7), np.float32)] + inputs_to_arrays(_window(model, 0))[1:]  # wrong text width
        raw.send_multipart(encode(Message("fusion_request", "fusion", 5, now_ns(), 0.0, bad, {"op": "infer"})))
        assert raw.poll(10_000)
        assert b"bad request" in raw.recv_multipart()[1]
        x = _window(model, 3)
        assert torch.allclose(client(x).score, EagerBackend(model)(x).score, atol=1e-5)
        assert server.stats.malformed == 2
    finally:
        raw.close()
        client.close()
        server.close()


@pytest.mark.parametrize("address", ["tcp://0.0.0.0:0", "tcp://*:0", "tcp://127.0.0.1;0.0.0.0:0"])
def test_binding_beyond_loopback_needs_allow_remote(model, address):
    with pytest.raises(ValueError, match="allow-remote"):
        FusionServer(EagerBackend(model), _info(model), address)


def test_unreachable_server_is_a_clear_error():
    client = RemoteFusion(f"tcp://127.0.0.1:{free_tcp_port()}", timeout_s=0.3)
    try:
        with pytest.raises(RemoteFusionError, match="not reachable|did not answer"):
            client.info()
    finally:
        client.close()


def _live(encoder, **cfg):
    from sentistream.engine.live_backend import live_backend
    from sentistream.models.live import LiveModel
    from sentistream.perception.audio_features import feature_dim
    from sentistream.perception.face import FACE_FEATURE_DIM

    fusion = FusionConfig(model="almt", **cfg)
    return LiveModel(fusion, encoder, FACE_FEATURE_DIM, feature_dim(), backend_factory=live_backend(fusion))


def test_serve_cli_and_live_model_over_the_server(tmp_path):
    """`sentistream serve` in its own process; a LiveModel with fusion.server sends its windows
    there, gets the local model's numbers, and scores locally when the server goes away."""
    from sentistream.engine.stage import FatalStageError
    from sentistream.engine.windowing import Window
    from sentistream.payloads import Word
    from sentistream.perception.text import TextEncoder

    port = free_tcp_port()
    address = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        sentistream_cmd(
            "serve", "--address", address, "--model", "almt", "--backend", "eager", "--max-queue-delay-us", "500"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for _ in range(50):
            lines.append(proc.stdout.readline())
            if "fusion server on" in lines[-1] or not lines[-1]:
                break
        assert f"fusion server on {address}" in lines[-1], "".join(lines)
        encoder = TextEncoder()
        local = _live(encoder, backend="eager")
        remote = _live(encoder, server=address, server_timeout_s=5.0)
        rng = np.random.default_rng(0)
        window = Window(
            0.0,
            3.0,
            rng.normal(0, 0.1, (45, local.dims.vision)).astype(np.float32),
            np.ones(45, bool),
            rng.normal(0, 1, (300, local.dims.audio)).astype(np.float32),
            context=[
                Word("what", 0.1, 0.3),
                Word("a", 0.3, 0.4),
                Word("great", 0.4, 0.8),
                Word("film", 0.8, 1.2),
            ],
        )
        a, b = remote.predict(window), local.predict(window)
        assert remote.describe()["backend"] == "remote"
        assert abs(a.score - b.score) < 1e-5
        # a model other than the server's is refused at start, with both identities named
        other = _live(encoder, server=address)
        torch.nn.init.zeros_(other.model.head.weight)
        with pytest.raises(FatalStageError, match="serves almt"):
            _ = other.backend
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        c = remote.predict(window)  # the server is gone: scored locally, same numbers
        assert abs(c.score - b.score) < 1e-5 and remote.backend.failures == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_request_past_its_timeout_is_answered_expired_not_run(model):
    server = _server(model)
    client = _dealer(server.address)
    try:
        x = _window(model, 0)
        msg = Message(
            "fusion_request", "fusion", 9, now_ns(), 0.0, inputs_to_arrays(x), {"op": "infer", "timeout_ms": 1}
        )
        client.send_multipart(encode(msg))
        _receive_all(server, 1)
        time.sleep(0.01)
        assert server._take_batch() == [] and server.stats.expired == 1 and server.pending_windows == 0
        assert client.poll(5000) and b"expired" in client.recv_multipart()[1]
    finally:
        client.close()
        server.close()
