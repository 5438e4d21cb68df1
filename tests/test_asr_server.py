"""The Whisper server: one real model in its own process, shared by sessions over real sockets."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import numpy as np
import pytest
import zmq
from conftest import sentistream_cmd
from test_asr import CHUNK, SENTENCES, text_of, tts, wer

from sentistream.engine.asr_server import RemoteWhisper, open_whisper
from sentistream.engine.messages import Message, encode, now_ns
from sentistream.perception.asr import AsrOptions, StreamingRecognizer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    address = f"tcp://127.0.0.1:{_free_port()}"
    proc = subprocess.Popen(
        sentistream_cmd("serve-asr", "--address", address, "--workers", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = proc.stdout.readline()  # printed once the model is loaded and the socket bound
    assert "Whisper server on" in line, line
    yield address, proc
    proc.terminate()
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Whisper server stopped" in out, out


def _session(address: str, audio: np.ndarray, out: dict, key: int) -> None:
    rec = StreamingRecognizer(AsrOptions(server=address), open_whisper(AsrOptions(server=address)))
    words = []
    for n, k in enumerate(range(0, audio.size, CHUNK), 1):
        rec.add_audio(audio[k : k + CHUNK], k / 16000)
        if n % 10 == 0:
            words += rec.step().committed
    words += rec.finish().committed
    out[key] = text_of(words)


def test_two_sessions_share_one_model(server, tmp_path):
    address, proc = server
    audio = [
        np.concatenate([np.zeros(8000, np.float32), tts(s, tmp_path / f"s{i}.wav"), np.zeros(8000, np.float32)])
        for i, s in enumerate(SENTENCES[:2])
    ]
    texts: dict[int, str] = {}
    threads = [threading.Thread(target=_session, args=(address, a, texts, i)) for i, a in enumerate(audio)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i in range(2):
        assert wer(SENTENCES[i], texts[i]) <= 0.2, texts
    info = RemoteWhisper(address).info()
    assert info["pid"] == proc.pid and info["workers"] == 2 and info["compute_type"] == "int8"
    assert info["stats"]["sessions_seen"] >= 3 and info["stats"]["requests"] >= 2  # 2 sessions + this client


def test_bad_requests_are_answered_and_the_server_goes_on(server, tmp_path):
    address, _ = server
    remote = RemoteWhisper(address, timeout_s=10)
    with pytest.raises(ValueError, match="unknown decode option"):  # refused before sending
        remote.transcribe(np.zeros(16000, np.float32), evil="x")
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(address)
    raw.send_multipart([b"asr", b"{not json", b"x"])  # malformed: an error reply, not a crash
    msg = Message("asr_request", "asr", 7, now_ns(), 0.0, [np.zeros((2, 2), np.float32)], meta={"op": "transcribe"})
    raw.send_multipart(encode(msg))
    evil = Message(
        "asr_request",
        "asr",
        8,
        now_ns(),
        0.0,
        [np.zeros(1600, np.float32)],
        meta={"op": "transcribe", "options": {"evil": "x"}},
    )
    raw.send_multipart(encode(evil))  # the server checks the options itself too
    replies = []
    deadline = time.monotonic() + 10
    while len(replies) < 3 and time.monotonic() < deadline:
        if raw.poll(500):
            replies.append(raw.recv_multipart())
    raw.close()
    assert len(replies) == 3 and all(b"error" in r[1] for r in replies)
    assert any(b"unknown decode option" in r[1] for r in replies)
    words = remote.transcribe(
        tts(SENTENCES[2], tmp_path / "s.wav"), encoder_pad_s=3.0, word_timestamps=True, language="en"
    )[0]
    assert wer(SENTENCES[2], " ".join(w.word for s in words for w in s.words)) <= 0.2


def test_unreachable_server_skips_the_decode_not_the_session(tmp_path):
    address = f"tcp://127.0.0.1:{_free_port()}"  # nobody listens
    rec = StreamingRecognizer(
        AsrOptions(server=address, server_timeout_s=0.5), open_whisper(AsrOptions(server=address, server_timeout_s=0.5))
    )
    audio = tts(SENTENCES[0], tmp_path / "a.wav")
    for k in range(0, audio.size, CHUNK):
        rec.add_audio(audio[k : k + CHUNK], k / 16000)
    t = time.monotonic()
    upd = rec.finish()
    assert upd.committed == [] and time.monotonic() - t < 5


@pytest.mark.parametrize("address", ["tcp://0.0.0.0:0", "tcp://*:0", "tcp://127.0.0.1;0.0.0.0:0"])
def test_binding_beyond_loopback_needs_allow_remote(address):
    """Checked before the model loads, so a refused bind costs nothing."""
    from sentistream.engine.asr_server import WhisperServer

    with pytest.raises(ValueError, match="allow-remote"):
        WhisperServer(address=address)
