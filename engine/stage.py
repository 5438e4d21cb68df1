"""The stage runtime: one stage = one OS process with its sockets and loop.

A stage subscribes to the streams it consumes, publishes the streams it
produces on one PUB socket (topics = stream names), reports readiness and
counters to the supervisor, and never lets one bad message end the process:
undecodable messages are counted as `malformed` and dropped, exceptions in a
handler are logged and counted as `errors`.

Drops are never silent: every message carries a per-stream sequence number,
and a subscriber that sees a gap counts the missing messages as `dropped`
(for video, whose newest frame wins, as `skipped_video`). A restarted stage
gets the last sequence numbers its previous run reported (`resume_seq`), so
what it missed while it was down is counted too.

Test-only fault injection (explicit params, never set by the engine itself):
`crash_at_start: true` makes the stage exit with code 70 before it does
anything (a stage that keeps crashing); `simulate_device_lost: {"stream": S,
"at_s": T}` makes a source behave as if the device behind stream S vanished at
media time T (the same eos + report a real lost camera or microphone gives).
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import zmq

from .config import EngineConfig, config_from_dict
from .messages import MAX_FRAME_BYTES, Message, MessageError, decode, now_ns
from .security import SocketSecurity

log = logging.getLogger("sentistream.stage")

EXIT_OK = 0
EXIT_FATAL = 3  # a device or configuration problem: restarting cannot help
EXIT_CRASH_INJECTED = 70  # params["crash_at_start"]: test-only fault injection
CONFLATED_STREAMS = frozenset({"video"})


class FatalStageError(RuntimeError):
    """An error that restarting the stage will not fix (missing device, bad file)."""


@dataclass
class StageParams:
    """What the graph tells one stage besides the config (``StageSpec.params``; JSON on the wire).
    Unknown keys are refused, so a misspelt parameter fails at once instead of being ignored."""

    outputs: list[str] = field(default_factory=list)  # streams this stage publishes
    # wiring, set by the supervisor
    events_address: str = ""  # fusion: the public address events are published on as well
    expected_inputs: list[str] = field(default_factory=list)  # fusion: the streams it waits for
    complete_windows: bool = False  # fusion: cut a window once every live input has delivered it
    nice: int = 0  # lower the process priority by this much (ASR yields the CPU)
    # per stage kind
    jsonl: str = ""  # sink: append every event to this file
    path: str = ""  # file source: the media file (default: [source] path or the demo clip)
    microphone: str | int | None = None  # microphone source: overrides [source] microphone
    # restart state, set by the supervisor when it respawns a stage
    t0_ns: int = 0  # a restarted source rejoins the session clock
    resume_from_s: float = 0.0  # ... at this media time
    resume_seq: dict[str, int] = field(default_factory=dict)  # last sequence numbers seen per input
    # test-only fault injection (module docstring)
    crash_at_start: bool = False
    simulate_device_lost: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> StageParams:
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown stage parameter(s): {', '.join(unknown)}")
        return cls(**d)


@dataclass
class StageSpec:
    """Everything a worker process needs to run one stage (JSON on the command line)."""

    name: str
    kind: str
    inputs: dict[str, str]  # stream -> address of the stage that publishes it
    output_address: str  # where this stage's PUB socket binds ("" = publishes nothing)
    control_address: str  # supervisor PULL: ready / stats / done / fatal
    command_address: str  # supervisor PUB: start / stop
    config: dict[str, Any]
    params: StageParams = field(default_factory=StageParams)
    is_source: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.params, dict):  # as read from JSON or written by hand
            self.params = StageParams.from_dict(self.params)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> StageSpec:
        return cls(**json.loads(text))


@dataclass
class StageCounters:
    received: int = 0
    published: int = 0
    malformed: int = 0
    errors: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    skipped_video: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)  # per input stream, for a restart

    def snapshot(self) -> dict[str, Any]:
        # not dataclasses.asdict: it cannot rebuild a defaultdict
        return {
            "received": self.received,
            "published": self.published,
            "malformed": self.malformed,
            "errors": self.errors,
            "dropped": dict(self.dropped),
            "skipped_video": self.skipped_video,
            "last_seq": dict(self.last_seq),
        }


class Stage:
    """Base class. Processors override `on_message`; sources override `produce`."""

    def __init__(self, spec: StageSpec, config: EngineConfig | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.config = config if config is not None else config_from_dict(spec.config)
        self.params = spec.params
        self.counters = StageCounters()
        self.stopping = False
        self.t0_ns: int | None = None  # session start on the shared clock (from "start")
        self._seq: dict[str, int] = defaultdict(int)
        # Seeded on a restart with what the previous run last saw: the gap is counted as dropped.
        self._last_seq: dict[str, int] = {str(k): int(v) for k, v in spec.params.resume_seq.items()}
        self.counters.last_seq = self._last_seq
        self._flowing = False  # reported "flowing" (first output after a start)
        self._eos_sent: dict[str, list[bytes]] = {}  # the last eos of each output stream (for repeats)
        self._eos_seen: dict[str, tuple[int, int]] = {}  # (seq, t_capture_ns) of the last eos per input
        self._eos_meta: dict[str, Any] = {}  # reason of the eos being handled, forwarded downstream
        self._lost = dict(spec.params.simulate_device_lost) if spec.params.simulate_device_lost else None
        self._finished = False  # a processor left its loop after its final output (finish())
        self._log_queue: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()  # see forward_logs
        self.control: Any = None
        self._last_stats = 0.0
        self.ctx = zmq.Context.instance()
        self.pub: zmq.Socket | None = None
        self.sub: zmq.Socket | None = None

    # ---- hooks -------------------------------------------------------------
    def setup(self) -> None:
        """Load models, open devices. Runs before the stage reports ready."""

    def on_message(self, msg: Message) -> None:
        """Handle one decoded message (processors)."""

    def on_eos(self, msg: Message) -> None:
        """An input stream ended. Default: forward end-of-stream on every output."""
        self.publish_eos(msg.t_media_s)

    def on_idle(self) -> None:
        """Called every loop turn (about every 20 ms without input)."""

    def produce(self) -> None:
        """Sources: publish until the media ends or `self.stopping`."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Release models and devices."""

    def stats_extra(self) -> dict[str, Any]:
        return {}

    @property
    def paced_by_events(self) -> bool:
        """A source that subscribes to the fusion events and waits for them (FileSource, fast pace)."""
        return self.spec.is_source and "events" in self.spec.inputs

    @property
    def output_streams(self) -> list[str]:
        return list(self.params.outputs)

    # ---- publishing --------------------------------------------------------
    def publish(self, msg: Message) -> None:
        if self.pub is None:
            raise RuntimeError(f"stage {self.name} has no output socket")
        if self._lost and msg.stream == self._lost.get("stream"):
            if self._lost.get("done"):
                return  # the simulated device is gone
            if msg.kind != "eos" and msg.t_media_s >= float(self._lost.get("at_s", 0.0)):
                self._lost["done"] = True
                self.device_lost(msg.stream, msg.t_media_s, "simulated device", "simulate_device_lost (test)")
                return
        msg.seq = self._seq[msg.stream]
        self._seq[msg.stream] += 1
        msg.trace.setdefault(self.name, now_ns())
        # PUB never blocks: at the high-water mark ZeroMQ drops, and the
        # subscriber's sequence check counts it.
        frames = msg.encode()
        if msg.kind == "eos":
            self._eos_sent[msg.stream] = [bytes(f) for f in frames]
        self.pub.send_multipart(frames, copy=False)
        self.counters.published += 1
        if not self._flowing and msg.kind != "eos":
            self._flowing = True
            self.report("flowing", stream=msg.stream)

    def repeat_eos(self, copies: int = 10, interval_s: float = 0.1) -> None:
        """Send each output stream's last eos again, a few times (consumers drop the copies).

        PUB drops at the high-water mark, and the eos that ends a fast source is the
        message most likely to meet a full queue (video queues only `video_hwm` frames):
        without the copies, a file replayed with --pace fast could end without its eos."""
        if self.pub is None or not self._eos_sent:
            return
        for _ in range(copies):
            time.sleep(interval_s)
            for frames in self._eos_sent.values():
                self.pub.send_multipart(frames)

    def publish_eos(self, t_media_s: float, streams: list[str] | None = None) -> None:
        # An upstream eos's reason (e.g. "device_lost") travels on with the eos it causes.
        meta = {"reason": self._eos_meta["reason"]} if self._eos_meta.get("reason") else {}
        for stream in streams or self.output_streams:
            self.publish(Message("eos", stream, 0, now_ns(), t_media_s, meta=dict(meta)))

    def device_lost(self, stream: str, t_media_s: float, device: str, error: str) -> None:
        """Sources: the device behind `stream` vanished. End that stream with reason
        "device_lost" (consumers forward the reason; fusion masks the modality) and tell
        the supervisor, which logs it and lists it in the run's result."""
        log.error("%s: %s lost at %.2f s (stream %r): %s", self.name, device, t_media_s, stream, error)
        self._lost = {"stream": stream, "done": True}  # nothing more goes out on that stream
        msg = Message("eos", stream, 0, now_ns(), t_media_s, meta={"reason": "device_lost", "device": device})
        msg.seq = self._seq[stream]
        msg.trace.setdefault(self.name, now_ns())
        assert self.pub is not None
        self._eos_sent[stream] = [bytes(f) for f in msg.encode()]
        self.pub.send_multipart(self._eos_sent[stream])
        self.counters.published += 1
        self.report("device_lost", stream=stream, device=device, error=error, t_media_s=t_media_s)

    def media_time_now(self) -> float:
        """Seconds since the session started, on the shared clock (live sources)."""
        assert self.t0_ns is not None
        return (now_ns() - self.t0_ns) / 1e9

    # ---- control channel ---------------------------------------------------
    def report(self, kind: str, **payload: Any) -> None:
        body = {"stage": self.name, "type": kind, "pid": _pid(), **payload}
        try:
            self.control.send_string(json.dumps(body), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # the supervisor is gone or busy; it will see the process state

    def forward_logs(self, level: int = logging.WARNING) -> None:
        """Send this process's log records at ``level`` and above to the supervisor (control
        channel, type "log"), which logs them on the terminal; everything else stays in the stage
        log. Records from any thread are queued and sent from the stage's own loop."""
        handler = _QueueHandler(self._log_queue)
        handler.setLevel(level)
        logging.getLogger().addHandler(handler)

    def _flush_logs(self) -> None:
        if self.control is None or threading.current_thread() is not threading.main_thread():
            return
        while True:
            try:
                record = self._log_queue.get_nowait()
            except queue.Empty:
                return
            self.report("log", level=record["level"], logger=record["logger"], message=record["message"])

    def maybe_send_stats(self, force: bool = False) -> None:
        self._flush_logs()
        now = time.monotonic()
        if force or now - self._last_stats >= self.config.supervisor.stats_interval_s:
            self._last_stats = now
            self.report("stats", counters=self.counters.snapshot(), **self.stats_extra())

    def _poll_commands(self) -> None:
        while True:
            try:
                frames = self.commands.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                body = json.loads(frames[-1])
            except (ValueError, IndexError):
                continue
            if body.get("type") == "start" and self.t0_ns is None:
                self.t0_ns = int(body["t0_ns"])
            elif body.get("type") == "stop":
                self.stopping = True

    # ---- main loop ---------------------------------------------------------
    def _open_sockets(self) -> None:
        tcfg = self.config.transport
        # CURVE on every socket when the transport asks for it (engine/security.py).
        self.security = SocketSecurity(tcfg, self.ctx)
        self.control = self.security.client(self.ctx.socket(zmq.PUSH))
        self.control.setsockopt(zmq.LINGER, 1000)
        self.control.setsockopt(zmq.SNDHWM, 1000)
        self.control.connect(self.spec.control_address)
        self.commands = self.security.client(self.ctx.socket(zmq.SUB))
        self.commands.setsockopt(zmq.MAXMSGSIZE, 1 << 16)
        self.commands.setsockopt(zmq.SUBSCRIBE, b"all")
        self.commands.setsockopt(zmq.SUBSCRIBE, self.name.encode())
        self.commands.connect(self.spec.command_address)
        if self.spec.output_address:
            self.pub = self.security.server(self.ctx.socket(zmq.PUB))
            # A PUB that carries conflated video (media: video + audio) queues at most video_hwm
            # messages per subscriber, so one that stops reading cannot make this process hold
            # hundreds of frames; live consumers still have their own receive queues (RCVHWM).
            # A source paced by the events it causes (a --pace fast replay) bounds what is in
            # flight itself, and its audio shares this socket: it queues `hwm`, so none is dropped.
            video_out = "video" in self.output_streams and tcfg.conflate_video and not self.paced_by_events
            self.pub.setsockopt(zmq.SNDHWM, tcfg.video_hwm if video_out else tcfg.hwm)
            self.pub.setsockopt(zmq.LINGER, 500)
            self.pub.bind(self.spec.output_address)
        if self.spec.inputs:
            self.sub = self.security.client(self.ctx.socket(zmq.SUB))
            # Memory stays bounded: conflated video (newest wins) queues a few frames, not
            # `hwm` of them, and a frame larger than any valid one is refused unread.
            video_only = tcfg.conflate_video and all(s in CONFLATED_STREAMS for s in self.spec.inputs)
            self.sub.setsockopt(zmq.RCVHWM, tcfg.video_hwm if video_only else tcfg.hwm)
            self.sub.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
            self.sub.setsockopt(zmq.LINGER, 0)
            for stream, address in self.spec.inputs.items():
                self.sub.setsockopt(zmq.SUBSCRIBE, stream.encode())
                self.sub.connect(address)

    def _track_sequence(self, msg: Message) -> None:
        key = msg.stream
        if msg.kind == "eos":
            self._last_seq.pop(key, None)
            return
        last = self._last_seq.get(key)
        if last is not None and msg.seq > last + 1:
            missing = msg.seq - last - 1
            if key in CONFLATED_STREAMS:
                self.counters.skipped_video += missing
            else:
                self.counters.dropped[key] += missing
                log.warning("%s: %d message(s) dropped on stream %r", self.name, missing, key)
        # seq <= last means the publisher restarted: start counting afresh.
        self._last_seq[key] = msg.seq
        if not self._flowing and self.pub is None:  # a sink: data reaches it again
            self._flowing = True
            self.report("flowing", stream=key)

    def _receive_batch(self, timeout_ms: int) -> list[Message]:
        assert self.sub is not None
        if not self.sub.poll(timeout_ms):
            return []
        batch: list[Message] = []
        while len(batch) < 256:
            try:
                frames = self.sub.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self.counters.received += 1
            try:
                msg = decode(frames)
            except MessageError as exc:
                self.counters.malformed += 1
                log.warning("%s: malformed message dropped: %s", self.name, exc)
                continue
            if msg.kind == "eos":
                key = (msg.seq, msg.t_capture_ns)
                if self._eos_seen.get(msg.stream) == key:
                    continue  # a repeated copy of an eos already handled (Stage.repeat_eos)
                self._eos_seen[msg.stream] = key
            self._track_sequence(msg)
            batch.append(msg)
        if not self.config.transport.conflate_video:
            return batch
        # Video: the newest frame wins; older queued frames are skipped (counted).
        newest_video: dict[str, int] = {}
        for i, m in enumerate(batch):
            if m.stream in CONFLATED_STREAMS and m.kind != "eos":
                newest_video[m.stream] = i
        kept = []
        for i, m in enumerate(batch):
            if m.stream in CONFLATED_STREAMS and m.kind != "eos" and newest_video[m.stream] != i:
                self.counters.skipped_video += 1
                continue
            kept.append(m)
        return kept

    def handle(self, msg: Message) -> None:
        """One decoded message to its hook: ``on_eos`` for an end of stream, else ``on_message``."""
        if msg.kind == "eos":
            self._eos_meta = msg.meta
            try:
                self.on_eos(msg)
            finally:
                self._eos_meta = {}
        else:
            self.on_message(msg)

    def _dispatch(self, msg: Message) -> None:
        try:
            self.handle(msg)
        except FatalStageError:
            raise
        except Exception:  # one bad message must not end the stage
            self.counters.errors += 1
            log.exception("%s: error while handling %s seq %d", self.name, msg.kind, msg.seq)

    def _wait_for_start(self) -> None:
        while self.t0_ns is None and not self.stopping:
            self.report("waiting")
            if self.commands.poll(200):
                self._poll_commands()

    def run(self) -> int:
        if self.params.crash_at_start:  # test-only fault injection (module docstring)
            log.error("%s: crash_at_start is set: exiting with code %d", self.name, EXIT_CRASH_INJECTED)
            return EXIT_CRASH_INJECTED
        _install_signal_handlers(self)
        delivered_linger_ms = 200  # how long the output may take to reach the consumers at exit
        self._open_sockets()
        try:
            self.setup()
        except FatalStageError as exc:
            log.error("%s", exc)
            self.report("fatal", error=str(exc))
            time.sleep(0.2)
            return EXIT_FATAL
        # Let subscriptions propagate before data flows (ZeroMQ's slow joiner).
        time.sleep(0.1)
        self.report("ready")
        try:
            if self.spec.is_source:
                if self.params.t0_ns:
                    self.t0_ns = int(self.params.t0_ns)  # a restarted source rejoins the session
                self._wait_for_start()
                if not self.stopping:
                    self.report("started")
                    self.produce()
                    self.repeat_eos()
                    self.maybe_send_stats(force=True)
                    self.report("done")
                    if not self.stopping:  # the media ended (not a stop request)
                        delivered_linger_ms = int(self.config.supervisor.drain_timeout_s * 1000)
            else:
                while not self.stopping:
                    self._poll_commands()
                    if self.sub is not None:
                        for msg in self._receive_batch(20):
                            if self.stopping:  # a stop request beats a long backlog
                                break
                            self._dispatch(msg)
                            self.maybe_send_stats()  # a long backlog must not silence the counters
                    else:
                        time.sleep(0.02)
                    self.on_idle()
                    self.maybe_send_stats()
                    if self._finished:
                        break
                self.maybe_send_stats(force=True)
        except FatalStageError as exc:
            log.error("%s", exc)
            self.report("fatal", error=str(exc))
            time.sleep(0.2)
            return EXIT_FATAL
        finally:
            self.teardown()
            self._flush_logs()
            for sock in (self.sub, self.commands):
                if sock is not None:
                    sock.close(linger=200)
            if self.pub is not None:
                # A source that reached its end keeps its output until the consumers have it (up to
                # the drain timeout): a recogniser behind a fast replay still has seconds of audio
                # and the eos queued here, and closing at once would lose them all unseen.
                self.pub.close(linger=delivered_linger_ms)
            self.control.close(linger=500)
            self.security.close()
            # Flush what is still queued (up to each socket's linger) before the interpreter
            # frees the buffers that zero-copy frames point at: exiting with frames in flight
            # crashed a fast source with SIGSEGV / "Bad address (src/tcp.cpp)" and lost its eos.
            self.ctx.destroy(linger=0)
        return EXIT_OK

    def finish(self) -> None:
        """Processors call this to leave the loop after their final output."""
        self._finished = True

    # ---- helpers for sources -----------------------------------------------
    def service(self) -> None:
        """Sources call this often: commands and counters."""
        self._poll_commands()
        self.maybe_send_stats()


class _QueueHandler(logging.Handler):
    """Keeps a log record's level, logger name and text (with its traceback) for forward_logs."""

    def __init__(self, target: queue.SimpleQueue) -> None:
        super().__init__()
        self.target = target
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + self._formatter.formatException(record.exc_info)
            self.target.put({"level": record.levelno, "logger": record.name, "message": message[-8000:]})
        except Exception:  # logging must never break the stage
            self.handleError(record)


def _pid() -> int:
    import os

    return os.getpid()


def _install_signal_handlers(stage: Stage) -> None:
    def _stop(signum: int, frame: Any) -> None:
        stage.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
