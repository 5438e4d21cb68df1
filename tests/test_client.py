"""The agent client: against a fake publisher (fast), then against real engines (sync, async,
latest, summary, the agent-loop example, and a restarted engine on the same port)."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from conftest import REPO, sentistream_cmd

from sentistream.client import SentimentClient, SentimentEvent, resolve_events_address
from sentistream.engine.messages import Message, now_ns
from sentistream.engine.protocol import ProtocolError
from sentistream.engine.supervisor import free_tcp_port


def _event(seq: int, t1: float, score: float = 0.0, words: tuple[str, ...] = (), **extra) -> dict:
    label = "neutral" if abs(score) < 0.5 else ("positive" if score > 0 else "negative")
    new_words = [{"text": w, "start_s": round(t1 - 0.2 + 0.01 * i, 3), "end_s": round(t1 - 0.1, 3)}
                 for i, w in enumerate(words)]  # fmt: skip
    return {
        "schema": "sentistream.event/1", "seq": seq, "window": {"t0": max(0.0, t1 - 3.0), "t1": t1},
        "score": score, "label": label, "confidence": 0.5,
        "contributions": {"text": 0.6, "audio": 0.2, "vision": 0.2},
        "modalities": {"text": bool(words), "audio": True, "vision": True},
        "transcript": " ".join(words), "partial": "", "words": new_words, "new_words": new_words, "context": "",
        "model": {"name": "fake", "placeholder": False, "checkpoint": "x.safetensors"},
        "latency_ms": {"face": {"face": 9.0, "to_fusion": 0.2, "capture_to_emit": 11.0},
                       "text_encoder": 1.0, "model": 2.0, "fusion": 3.0, "capture_to_emit": 11.0},
        "t_emit_ns": now_ns(),
        **extra,
    }  # fmt: skip


class FakeEngine:
    """A PUB socket that speaks the engine's wire format."""

    def __init__(self) -> None:
        self.address = f"tcp://127.0.0.1:{free_tcp_port()}"
        self.sock = zmq.Context.instance().socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.address)
        self.seq = 0

    def send(self, event: dict) -> None:
        self.sock.send_multipart(
            Message("event", "events", self.seq, now_ns(), event["window"]["t1"], meta=event).encode()
        )
        self.seq += 1

    def send_raw(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture()
def fake():
    eng = FakeEngine()
    yield eng
    eng.close()


def _connected(client: SentimentClient, fake: FakeEngine) -> None:
    """Publish a probe event until the client has it (ZeroMQ's slow joiner), then reset."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and client.latest() is None:
        fake.send(_event(0, 0.25))
        time.sleep(0.05)
    assert client.latest() is not None, "the client never received the probe"


# ---- unit ----------------------------------------------------------------------------------------


def test_event_dataclass_parses_and_validates():
    raw = _event(3, 4.0, 1.2, ("hello", "world"), final=True)
    ev = SentimentEvent.from_dict(raw)
    assert ev.seq == 3 and ev.window.t1 == 4.0 and ev.window.length_s == 3.0
    assert ev.label == "positive" and ev.final and ev.latency == 11.0
    assert [w.text for w in ev.new_words] == ["hello", "world"] and ev.model.name == "fake"
    assert ev.to_dict() == raw
    for broken in ({**raw, "score": 7}, {**raw, "label": "meh"}, {k: v for k, v in raw.items() if k != "window"},
                   {**raw, "schema": "sentistream.event/2"}, [], "x"):  # fmt: skip
        with pytest.raises(ProtocolError):
            SentimentEvent.from_dict(broken)
    # unknown fields are fine (the schema grows within version 1)
    assert SentimentEvent.from_dict({**raw, "speaker": "A"}).raw["speaker"] == "A"


def test_resolve_events_address(tmp_path, monkeypatch):
    monkeypatch.delenv("SENTISTREAM_EVENTS", raising=False)
    assert resolve_events_address("tcp://127.0.0.1:1") == "tcp://127.0.0.1:1"
    conf = tmp_path / "c.toml"
    conf.write_text('[transport]\nevents_address = "tcp://127.0.0.1:5557"\n')
    assert resolve_events_address(None, conf) == "tcp://127.0.0.1:5557"
    assert SentimentClient.from_config(conf).address == "tcp://127.0.0.1:5557"
    conf.write_text('[transport]\nevents_address = "auto"\n')
    with pytest.raises(ValueError, match="auto"):
        resolve_events_address(None, conf)
    with pytest.raises(ValueError, match="auto"):  # the packaged default is "auto"
        resolve_events_address()
    monkeypatch.setenv("SENTISTREAM_EVENTS", "ipc:///tmp/x.sock")
    assert resolve_events_address() == "ipc:///tmp/x.sock"
    with pytest.raises(ValueError, match="tcp://"):
        resolve_events_address("127.0.0.1:5557")


def test_malformed_messages_are_skipped_and_counted(fake):
    with SentimentClient(fake.address) as client:
        _connected(client, fake)
        before = client.stats.malformed
        it = client.events(timeout=30)  # a bound, not a speed target: the machine may be loaded
        fake.send_raw([b"events", b"{not json"])
        fake.send_raw([b"events", json.dumps({"v": 1, "kind": "event", "meta": "nope"}).encode()])
        fake.send_raw([b"events", json.dumps({"v": 9, "kind": "event", "meta": {}}).encode()])
        fake.send_raw([b"events"])
        fake.send(_event(1, 0.5, score=9.0))  # fails validation: score out of range
        fake.send(_event(2, 0.75, 1.0))
        got = next(it)
        assert got.seq == 2 and got.score == 1.0  # the loop went on to the next good event
        assert client.stats.malformed - before == 5
        assert "score" in client.stats.last_error


def test_events_are_kept_from_the_call_not_from_the_first_next(fake):
    with SentimentClient(fake.address) as client:
        _connected(client, fake)
        it = client.events(timeout=30)
        fake.send(_event(7, 0.5, 1.0))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (client.latest() is None or client.latest().seq != 7):
            time.sleep(0.02)
        # The receiver has handled the event before the iteration starts: it must not be lost.
        assert next(it).seq == 7


def test_latest_summary_and_restarts(fake):
    with SentimentClient(fake.address) as client:
        _connected(client, fake)
        time.sleep(0.2)
        base = (client.stats.restarts, client.stats.sessions, client.stats.missed)
        words = {4: ("I", "love"), 8: ("this",), 30: ("film",)}
        for i in range(1, 41):  # 10 s of stream time, scores rising from -2 to +2
            fake.send(_event(i, 0.25 + i * 0.25, score=-2 + 4 * i / 40, words=words.get(i, ())))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (client.latest() is None or client.latest().seq != 40):
            time.sleep(0.02)
        ev = client.latest()
        assert ev.seq == 40 and ev.window.t1 == pytest.approx(10.25)
        s = client.summary(5)
        assert 20 <= s.events <= 21 and s.t1 == pytest.approx(10.25)
        assert sum(s.label_counts.values()) == s.events and s.label_counts["positive"] >= 14
        assert s.dominant_label == "positive"
        assert s.trend_label == "rising" and s.slope_per_s == pytest.approx(0.4, rel=0.05)
        assert s.mean_score == pytest.approx(1.0, abs=0.15)
        assert s.words == ("film",)  # only words spoken in the last 5 s
        assert client.summary(60).text == "I love this film"
        assert (client.stats.restarts, client.stats.sessions, client.stats.missed) == base
        # the fusion stage restarts: seq back to 0, the stream clock goes on -> history kept
        fake.send(_event(0, 10.5, 1.0))
        # then the engine restarts: seq and the stream clock back near 0 -> a new session
        fake.send(_event(0, 0.25, -1.0))
        fake.send(_event(2, 0.75, -1.0))  # seq 1 lost on the way
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and client.stats.missed == base[2]:
            time.sleep(0.02)
        st = client.stats
        assert (st.restarts, st.sessions, st.missed) == (base[0] + 2, base[1] + 1, base[2] + 1)
        assert [e.window.t1 for e in client.history()] == [0.25, 0.75]  # the old session's history is gone
        assert client.summary(10).mean_score == -1.0
        assert client.latest(max_age_s=60) is not None and client.latest(max_age_s=0.0) is None


def test_async_events_on_a_fake_engine(fake):
    client = SentimentClient(fake.address)

    async def collect() -> list[SentimentEvent]:
        out = []
        agen = client.aevents(timeout=10)
        task = asyncio.ensure_future(_take(agen, out, 3))
        i = 0
        while not task.done():
            i += 1
            fake.send(_event(i, i * 0.25))
            await asyncio.sleep(0.05)
        await task
        return out

    events = asyncio.run(collect())
    client.close()
    assert len(events) == 3 and all(isinstance(e, SentimentEvent) for e in events)
    assert [e.seq for e in events] == sorted(e.seq for e in events)


async def _take(agen, out: list, n: int) -> None:
    async for ev in agen:
        out.append(ev)
        if len(out) >= n:
            break
    await agen.aclose()


# ---- real engines ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def port() -> int:
    return free_tcp_port()


@pytest.fixture(scope="module")
def client(port):
    c = SentimentClient(f"tcp://127.0.0.1:{port}", reconnect_after_s=3.0).start()  # before any engine exists
    yield c
    c.close()


def _start_engine(port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        sentistream_cmd("run", "--source", "demo", "--events", f"tcp://127.0.0.1:{port}", "--view", "none", *extra),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err or ""


@pytest.fixture(scope="module")
def engine(port, client):
    """The first engine: the demo clip on a loop, so it outlasts the slowest machine."""
    proc = _start_engine(port, "--loop")
    yield proc
    _stop(proc)


def test_sync_events_from_a_real_engine(client, engine):
    events = list(itertools.islice(client.events(timeout=240), 8))
    assert len(events) == 8, f"no events (engine exit code {engine.poll()})"
    assert all(isinstance(e, SentimentEvent) and e.schema == "sentistream.event/1" for e in events)
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + 8))
    t1 = [e.window.t1 for e in events]
    assert all(b - a == pytest.approx(0.25, abs=1e-6) for a, b in zip(t1, t1[1:]))
    assert client.stats.malformed == 0


def test_async_events_from_a_real_engine(client, engine):
    async def collect() -> list[SentimentEvent]:
        out: list[SentimentEvent] = []
        async for ev in client.aevents(timeout=60):
            out.append(ev)
            if len(out) >= 6:
                break
        return out

    events = asyncio.run(collect())
    assert len(events) == 6
    t1 = [e.window.t1 for e in events]
    assert t1 == sorted(t1) and t1[-1] > t1[0]
    assert client.stats.malformed == 0


def test_latest_and_summary_from_a_real_engine(client, engine):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # far enough into the clip that words were committed
        ev = client.latest()
        if ev is not None and ev.window.t1 >= 7.0 and client.summary(60).words:
            break
        time.sleep(0.25)
    ev = client.latest(max_age_s=5)
    assert ev is not None and ev.window.t1 >= 7.0
    assert -3 <= ev.score <= 3 and ev.label in ("negative", "neutral", "positive") and ev.latency > 0
    s = client.summary(5)
    assert s.latest == client.latest() or s.latest.seq <= client.latest().seq
    assert 15 <= s.events <= 22  # 5 s of stream time at a 0.25 s hop (+ one edge)
    assert s.t1 - s.t0 <= 5.0 + 1e-6 and sum(s.label_counts.values()) == s.events
    assert -3 <= s.mean_score <= 3 and 0 <= s.mean_confidence <= 1
    assert s.trend_label in ("rising", "falling", "steady")
    said = {w.lower().strip(".,!?") for w in client.summary(60).words}
    assert said & {"i", "really", "love", "this", "movie", "wonderful", "amazing", "film", "terrible"}, said


def test_agent_loop_example_reads_sentiment_before_replying(port, engine):
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "agent_loop.py"), "--events", f"tcp://127.0.0.1:{port}",
         "--say", "hi there", "--say", "what did you think of it?", "--pause", "1.5", "--wait", "60"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    replies = [line for line in proc.stdout.splitlines() if line.startswith("agent:")]
    assert len(replies) == 2, proc.stdout
    assert all("[sentiment " in r for r in replies), proc.stdout  # each reply read the current sentiment


def test_same_client_follows_a_restarted_engine(client, engine, port):
    """Stop the engine, start another on the same port: the same client keeps receiving."""
    before = client.latest()
    assert before is not None
    sessions, restarts = client.stats.sessions, client.stats.restarts
    err = _stop(engine, signal.SIGTERM)
    assert engine.returncode == 0, err[-2000:]
    second = _start_engine(port, "--duration", "8")
    try:
        events = []
        for ev in client.events(timeout=240):
            events.append(ev)
            if len(events) >= 6:
                break
        assert len(events) >= 6, f"no events from the new engine (exit code {second.poll()})"
        # the new session: its stream clock starts again near 0, and the client noticed
        assert events[0].window.t1 < before.window.t1
        assert client.stats.sessions == sessions + 1 and client.stats.restarts >= restarts + 1
        assert client.stats.reconnects >= 1  # silence while the new engine loaded its models
        assert all(e.window.t1 <= events[-1].window.t1 for e in client.history())
        err2 = second.communicate(timeout=240)[1]
        assert second.returncode == 0, err2[-2000:]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and client.stats.eos == 0:
            time.sleep(0.1)
        assert client.stats.eos >= 1  # the second engine's clip ended: end of stream
        assert client.latest().window.t1 >= 7.0
        assert client.stats.malformed == 0
    finally:
        _stop(second)


def test_client_never_raises_when_nothing_listens():
    c = SentimentClient(f"tcp://127.0.0.1:{free_tcp_port()}")
    assert c.latest(wait=0.3) is None
    assert list(c.events(timeout=0.3)) == []
    s = c.summary(10)
    assert s.events == 0 and s.mean_score is None and s.trend_label == "unknown"
    c.close()
    assert list(c.events(timeout=0.1)) == []


def test_examples_and_docs_exist():
    assert (REPO / "examples" / "agent_loop.py").is_file()
    doc = (REPO / "docs" / "protocol.md").read_text()
    assert "SentimentClient" in doc and "aevents" in doc
    assert Path(REPO / "client.py").is_file()
