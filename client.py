"""A Python client for agents and tools that consume a running engine's sentiment stream.

    from .client import SentimentClient

    with SentimentClient("tcp://127.0.0.1:5557") as client:        # or config="my.toml"
        for ev in client.events(timeout=10):                          # sync
            print(ev.window.t1, ev.label, ev.score, ev.transcript)
        now = client.latest()                                         # the current state
        recent = client.summary(10)                                   # the last 10 s of stream time

    async for ev in client.aevents():                                 # asyncio (zmq.asyncio)
        ...

The engine publishes one `sentistream.event/1` JSON event per hop on a ZeroMQ PUB
socket (docs/protocol.md). The client subscribes, validates each event against the
schema, and keeps a short history (by stream time) for `latest()` and `summary()`.

Robustness:
  * ZeroMQ reconnects by itself when the engine goes away and comes back on the
    same address; the client also re-creates its socket after `reconnect_after_s`
    of silence following traffic, and detects a restarted engine by its event
    sequence going back (a restarted fusion stage keeps the stream clock: the
    history is kept; a new session restarts the clock: the history is cleared).
  * A malformed message or an event that fails validation is skipped and counted
    in `client.stats.malformed`; nothing is ever raised into the agent's loop.
  * A background thread receives continuously (started on first sync use), so
    `latest()` is always fresh however seldom the agent asks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import queue
import threading
import time
import tomllib
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import zmq

from .engine.protocol import (
    EVENT_SCHEMA,
    EVENTS_TOPIC,
    ProtocolError,
    parse_event_frames,
    validate_event,
)
from .payloads import Word

__all__ = [
    "ClientStats",
    "ModelInfo",
    "SentimentClient",
    "SentimentEvent",
    "Summary",
    "Window",
    "Word",
    "resolve_events_address",
]

log = logging.getLogger("sentistream.client")

LABELS = ("negative", "neutral", "positive")
ENV_ADDRESS = "SENTISTREAM_EVENTS"
_ADDRESS_SCHEMES = ("tcp://", "ipc://", "inproc://")
_END = object()  # sentinel for iterator queues


# ---- typed events ---------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    t0: float
    t1: float

    @property
    def length_s(self) -> float:
        return self.t1 - self.t0


@dataclass(frozen=True)
class ModelInfo:
    name: str
    placeholder: bool
    checkpoint: str


@dataclass(frozen=True)
class SentimentEvent:
    """One `sentistream.event/1` event (see engine/schema/event-1.json for each field)."""

    seq: int
    window: Window
    score: float
    label: str
    confidence: float
    contributions: Mapping[str, float]
    modalities: Mapping[str, bool]
    transcript: str
    partial: str
    words: tuple[Word, ...]
    new_words: tuple[Word, ...]
    context: str
    model: ModelInfo
    latency_ms: Mapping[str, Any]
    t_emit_ns: int
    final: bool = False
    # What each modality changed, in score points (occlusion; None from engines without it).
    attributions: Mapping[str, float] | None = None
    schema: str = EVENT_SCHEMA
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    received_at: float = field(default=0.0, repr=False, compare=False)  # time.monotonic() here

    @property
    def t1(self) -> float:
        return self.window.t1

    @property
    def latency(self) -> float:
        """Capture -> emit of the newest input, in ms."""
        return float(self.latency_ms.get("capture_to_emit", 0.0))

    @classmethod
    def from_dict(cls, data: Any, *, validate: bool = True, received_at: float | None = None) -> SentimentEvent:
        """Build from the JSON event; raises ProtocolError when it does not follow the schema."""
        if validate:
            errors = validate_event(data)
            if errors:
                raise ProtocolError("; ".join(errors[:5]))
        elif not isinstance(data, dict):
            raise ProtocolError("an event is a JSON object")

        def words(key: str) -> tuple[Word, ...]:
            return tuple(Word(str(w["text"]), float(w["start_s"]), float(w["end_s"])) for w in data.get(key, []))

        try:
            model = data["model"]
            return cls(
                seq=int(data["seq"]),
                window=Window(float(data["window"]["t0"]), float(data["window"]["t1"])),
                score=float(data["score"]),
                label=str(data["label"]),
                confidence=float(data["confidence"]),
                contributions={str(k): float(v) for k, v in data["contributions"].items()},
                modalities={str(k): bool(v) for k, v in data["modalities"].items()},
                transcript=str(data["transcript"]),
                partial=str(data["partial"]),
                words=words("words"),
                new_words=words("new_words"),
                context=str(data.get("context", "")),
                model=ModelInfo(str(model["name"]), bool(model["placeholder"]), str(model.get("checkpoint", ""))),
                latency_ms=dict(data["latency_ms"]),
                t_emit_ns=int(data["t_emit_ns"]),
                final=bool(data.get("final", False)),
                attributions=(
                    {str(k): float(v) for k, v in data["attributions"].items()} if data.get("attributions") else None
                ),
                schema=str(data["schema"]),
                raw=data,
                received_at=time.monotonic() if received_at is None else received_at,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"event does not follow {EVENT_SCHEMA}: {exc!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.raw))


@dataclass(frozen=True)
class Summary:
    """An aggregate over the most recent `seconds` of stream time."""

    seconds: float  # the span asked for
    t0: float  # the stream-time span covered (window ends of the first and last event)
    t1: float
    events: int
    mean_score: float | None
    mean_confidence: float | None
    label_counts: Mapping[str, int]
    dominant_label: str | None
    slope_per_s: float  # least-squares slope of score over stream time
    trend: float  # score change over the span implied by the slope (slope x span)
    trend_label: str  # "rising" | "falling" | "steady" | "unknown" (fewer than 2 events)
    words: tuple[str, ...]  # committed words spoken in the span, in order
    partial: str  # the recogniser's current guess (not yet committed)
    latest: SentimentEvent | None

    @property
    def text(self) -> str:
        return " ".join(self.words)


@dataclass
class ClientStats:
    received: int = 0  # messages received on the events topic
    events: int = 0  # valid events accepted
    malformed: int = 0  # messages or events that failed to parse or validate (skipped)
    duplicates: int = 0  # the same event seen twice (e.g. sync and async subscribers)
    missed: int = 0  # gaps in the event sequence
    restarts: int = 0  # the event sequence went back: the fusion stage or the engine restarted
    sessions: int = 0  # sessions seen (a restarted engine starts a new session and stream clock)
    reconnects: int = 0  # sockets re-created after silence
    eos: int = 0  # end-of-stream messages (a session ended)
    last_error: str = ""


# ---- configuration ----------------------------------------------------------------------


def resolve_events_address(address: str | None = None, config: str | os.PathLike | None = None) -> str:
    """The address to subscribe to: the argument, else $SENTISTREAM_EVENTS, else the config
    file's `transport.events_address` (falling back to the packaged configs/default.toml)."""
    source = "argument"
    if not address:
        address, source = os.environ.get(ENV_ADDRESS, ""), f"${ENV_ADDRESS}"
    if not address:
        if config is not None:
            path = Path(config).expanduser()
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ValueError(f"cannot read config {path}: {exc}") from None
            address, source = data.get("transport", {}).get("events_address", ""), f"{path}: transport.events_address"
        if not address:
            default = resources.files("sentistream.configs").joinpath("default.toml")
            try:
                data = tomllib.loads(default.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError):
                data = {}
            address, source = data.get("transport", {}).get("events_address", "auto"), "configs/default.toml"
    if not isinstance(address, str) or address == "auto":
        raise ValueError(
            f"no fixed events address ({source} is {address!r}: 'auto' picks a new port on every run); "
            "start the engine with --events tcp://127.0.0.1:5557 (or set transport.events_address) "
            "and give the client the same address"
        )
    if not address.startswith(_ADDRESS_SCHEMES):
        raise ValueError(f"events address {address!r} ({source}) must start with tcp://, ipc:// or inproc://")
    return address


# ---- the client -------------------------------------------------------------------------


class SentimentClient:
    def __init__(
        self,
        address: str | None = None,
        *,
        config: str | os.PathLike | None = None,
        validate: bool = True,
        history_s: float = 600.0,
        reconnect_after_s: float = 5.0,
        context: zmq.Context | None = None,
    ) -> None:
        self.address = resolve_events_address(address, config)
        self.validate = validate
        self.history_s = float(history_s)
        self.reconnect_after_s = float(reconnect_after_s)
        self.stats = ClientStats()
        self.session_ended = False  # the engine said end-of-stream and nothing came since
        self._ctx = context or zmq.Context.instance()
        self._cond = threading.Condition(threading.RLock())
        self._history: deque[SentimentEvent] = deque()
        self._latest: SentimentEvent | None = None
        self._last_seq: int | None = None
        self._last_t1: float | None = None
        self._seen: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._subscribers: list[queue.Queue] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_message_at: float | None = None
        self._warned = False
        self._closed = False

    @classmethod
    def from_config(cls, path: str | os.PathLike, **kwargs: Any) -> SentimentClient:
        return cls(None, config=path, **kwargs)

    def __repr__(self) -> str:
        return f"SentimentClient({self.address!r}, events={self.stats.events})"

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> SentimentClient:
        """Start the background receiver (idempotent; sync methods call it themselves)."""
        with self._cond:
            if self._closed:
                return self
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._receive_loop, name="sentistream-client", daemon=True)
                self._thread.start()
        return self

    def close(self) -> None:
        """Stop receiving; iterators end. The client cannot be restarted."""
        self._closed = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._thread = None
        with self._cond:
            for q in list(self._subscribers):
                q.put(_END)

    def __enter__(self) -> SentimentClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- state ------------------------------------------------------------------------
    def latest(self, *, wait: float = 0.0, max_age_s: float | None = None) -> SentimentEvent | None:
        """The most recent event (None before the first). `wait`: seconds to wait for a first
        event; `max_age_s`: return None when the newest event arrived longer ago than that."""
        self.start()
        deadline = time.monotonic() + max(0.0, wait)
        with self._cond:
            while self._latest is None and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            ev = self._latest
        if ev is not None and max_age_s is not None and time.monotonic() - ev.received_at > max_age_s:
            return None
        return ev

    def history(self, seconds: float | None = None) -> list[SentimentEvent]:
        """Events of the current session, oldest first; the last `seconds` of stream time if given."""
        self.start()
        with self._cond:
            events = list(self._history)
        if seconds is not None and events:
            start = events[-1].window.t1 - float(seconds)
            events = [e for e in events if e.window.t1 > start - 1e-9]
        return events

    def summary(self, seconds: float = 10.0) -> Summary:
        """Mean score, label counts, trend and words said over the last `seconds` of stream time."""
        events = self.history(seconds)
        latest = events[-1] if events else None
        counts = {label: 0 for label in LABELS}
        for e in events:
            counts[e.label] = counts.get(e.label, 0) + 1
        if not events:
            return Summary(float(seconds), 0.0, 0.0, 0, None, None, counts, None, 0.0, 0.0, "unknown", (), "", None)
        t0, t1 = events[0].window.t1, events[-1].window.t1
        scores = [e.score for e in events]
        mean = sum(scores) / len(scores)
        slope = _slope([e.window.t1 for e in events], scores)
        span = t1 - t0
        trend = slope * span
        if len(events) < 2 or span <= 0:
            trend_label = "unknown"
        else:
            trend_label = "rising" if trend >= 0.5 else "falling" if trend <= -0.5 else "steady"
        start = t1 - float(seconds)
        seen: set[tuple[str, float]] = set()
        words: list[str] = []
        with self._cond:  # words may have been committed by events just before the span
            all_words = [w for e in self._history for w in e.new_words]
        for w in sorted(all_words, key=lambda w: w.start_s):
            key = (w.text, w.start_s)
            if w.end_s >= start and key not in seen and w.text:
                seen.add(key)
                words.append(w.text)
        dominant = max(counts, key=lambda k: counts[k]) if events else None
        return Summary(
            seconds=float(seconds),
            t0=t0,
            t1=t1,
            events=len(events),
            mean_score=mean,
            mean_confidence=sum(e.confidence for e in events) / len(events),
            label_counts=counts,
            dominant_label=dominant,
            slope_per_s=slope,
            trend=trend,
            trend_label=trend_label,
            words=tuple(words),
            partial=latest.partial if latest else "",
            latest=latest,
        )

    def seconds_since_last_message(self) -> float | None:
        return None if self._last_message_at is None else time.monotonic() - self._last_message_at

    # ---- sync iteration --------------------------------------------------------------
    def events(self, timeout: float | None = None, *, stop_at_eos: bool = False) -> Iterator[SentimentEvent]:
        """Yield events as they arrive, from the moment of this call.

        timeout: end the iteration when no event came for that many seconds (None: never).
        stop_at_eos: end it when the engine reports the end of its stream.
        """
        self.start()
        q: queue.Queue = queue.Queue(maxsize=10_000)
        # Subscribe now, not at the first next(): a generator's body runs only then, and events
        # that arrive in between would be lost (seen on a loaded CI machine).
        with self._cond:
            self._subscribers.append(q)
        it = self._drain(q, timeout, stop_at_eos)
        weakref.finalize(it, self._unsubscribe, q)  # also when the iterator is never started
        return it

    def _unsubscribe(self, q: queue.Queue) -> None:
        with self._cond:
            if q in self._subscribers:
                self._subscribers.remove(q)

    def _drain(self, q: queue.Queue, timeout: float | None, stop_at_eos: bool) -> Iterator[SentimentEvent]:
        try:
            while True:
                try:
                    item = q.get(timeout=timeout)
                except queue.Empty:
                    return
                if item is _END:
                    return
                if isinstance(item, str):  # "eos"
                    if stop_at_eos:
                        return
                    continue
                yield item
        finally:
            self._unsubscribe(q)

    # ---- async iteration -------------------------------------------------------------
    async def aevents(
        self, timeout: float | None = None, *, stop_at_eos: bool = False
    ) -> AsyncIterator[SentimentEvent]:
        """Like events(), on its own zmq.asyncio socket (no thread involved)."""
        import zmq.asyncio

        actx = zmq.asyncio.Context.shadow(self._ctx)
        sock = self._new_socket(actx)
        got_since_connect = False
        last_event = last_msg = time.monotonic()
        try:
            while True:
                if await sock.poll(100):
                    while True:
                        try:
                            frames = await sock.recv_multipart(flags=zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        last_msg = time.monotonic()
                        got_since_connect = True
                        kind, ev, _ = self._ingest(frames)
                        if kind == "eos" and stop_at_eos:
                            return
                        if ev is not None:
                            last_event = time.monotonic()
                            yield ev
                    continue
                await asyncio.sleep(0)
                now = time.monotonic()
                if timeout is not None and now - last_event > timeout:
                    return
                if got_since_connect and now - last_msg > self.reconnect_after_s:
                    sock.close(linger=0)
                    sock = self._new_socket(actx)
                    got_since_connect = False
                    last_msg = now
                    with self._cond:
                        self.stats.reconnects += 1
        finally:
            sock.close(linger=0)

    # ---- internals ---------------------------------------------------------------------
    def _new_socket(self, ctx: zmq.Context) -> zmq.Socket:
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.SUBSCRIBE, EVENTS_TOPIC)
        sock.connect(self.address)
        return sock

    def _receive_loop(self) -> None:
        sock = self._new_socket(self._ctx)
        got_since_connect = False
        last_msg = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    ready = sock.poll(100)
                except zmq.ZMQError as exc:  # the context is being terminated
                    log.debug("client socket: %s", exc)
                    return
                if ready:
                    while True:
                        try:
                            frames = sock.recv_multipart(flags=zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        last_msg = time.monotonic()
                        got_since_connect = True
                        kind, ev, _ = self._ingest(frames)
                        if kind is not None and (ev is not None or kind == "eos"):
                            self._fan_out(ev if ev is not None else "eos")
                    continue
                now = time.monotonic()
                if got_since_connect and now - last_msg > self.reconnect_after_s:
                    # Silence after traffic: the engine may be gone. ZeroMQ reconnects by itself;
                    # a fresh socket also clears any state of a half-dead connection.
                    sock.close(linger=0)
                    sock = self._new_socket(self._ctx)
                    got_since_connect = False
                    last_msg = now
                    with self._cond:
                        self.stats.reconnects += 1
                    log.info(
                        "no events for %.1f s; re-created the subscription to %s", self.reconnect_after_s, self.address
                    )
        except Exception:  # never let the receiver die silently
            log.exception("sentistream client receiver stopped")
        finally:
            sock.close(linger=0)

    def _fan_out(self, item: Any) -> None:
        with self._cond:
            subscribers = list(self._subscribers)
        for q in subscribers:
            try:
                q.put_nowait(item)
            except queue.Full:  # a consumer that stopped reading: drop its oldest
                try:
                    q.get_nowait()
                    q.put_nowait(item)
                except (queue.Empty, queue.Full):
                    pass

    def _ingest(self, frames: list[Any]) -> tuple[str | None, SentimentEvent | None, bool]:
        """Parse, validate and record one message -> (kind, event, is_new). Never raises."""
        with self._cond:
            self.stats.received += 1
        try:
            kind, header = parse_event_frames(frames)
            if kind == "eos":
                with self._cond:
                    self.stats.eos += 1
                    self.session_ended = True
                return "eos", None, True
            ev = SentimentEvent.from_dict(header["meta"], validate=self.validate)
        except ProtocolError as exc:
            with self._cond:
                self.stats.malformed += 1
                self.stats.last_error = str(exc)[:500]
            if not self._warned:
                log.warning("malformed event skipped: %s", exc)
                self._warned = True
            else:
                log.debug("malformed event skipped: %s", exc)
            return None, None, False
        with self._cond:
            self._last_message_at = time.monotonic()
            key = (ev.t_emit_ns, ev.seq)
            if key in self._seen:
                self.stats.duplicates += 1
                return "event", ev, False
            self._seen[key] = None
            while len(self._seen) > 4096:
                self._seen.popitem(last=False)
            self._record(ev)
            self._cond.notify_all()
        return "event", ev, True

    def _record(self, ev: SentimentEvent) -> None:
        """Update sequence tracking, history and latest (lock held)."""
        st = self.stats
        st.events += 1
        if self._last_seq is None or self._last_t1 is None:
            st.sessions += 1
        else:
            clock_back = ev.window.t1 < self._last_t1 - 1e-6
            if ev.seq <= self._last_seq or clock_back:
                st.restarts += 1
                if clock_back:
                    # a restarted engine: a new session on a new stream clock
                    st.sessions += 1
                    self._history.clear()
                    log.info("engine restarted: new session (event seq %d after %d)", ev.seq, self._last_seq)
                else:
                    log.info(
                        "fusion restarted (event seq %d after %d); the stream clock continues", ev.seq, self._last_seq
                    )
            elif ev.seq > self._last_seq + 1:
                st.missed += ev.seq - self._last_seq - 1
        self.session_ended = False
        self._last_seq = ev.seq
        self._last_t1 = ev.window.t1
        self._latest = ev
        self._history.append(ev)
        horizon = ev.window.t1 - self.history_s
        while self._history and self._history[0].window.t1 < horizon:
            self._history.popleft()


def _slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0 or not math.isfinite(sxx):
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
