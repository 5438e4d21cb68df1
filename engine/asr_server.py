"""The Whisper server: one loaded faster-whisper model shared by many sessions.

    sentistream serve-asr --address tcp://127.0.0.1:5561 --workers 2

A session's ASR stage keeps its own streaming state (VAD, rolling buffer, LocalAgreement commits:
``perception.asr.StreamingRecognizer``); only the Whisper decodes go to the server when
``[asr] server = "tcp://127.0.0.1:5561"``. So N sessions on one machine (or one GPU) hold one copy
of the model instead of N, and on CUDA their decodes share the device.

Protocol: the engine's multipart messages (engine/messages.py: JSON header + raw buffers; no
pickle) over a ROUTER socket. A request (``asr_request``) carries one ``float32`` array, the 16 kHz
mono clip, and ``meta.op = "transcribe"`` with ``meta.options`` (decode options from an allow-list:
beam size, language, thresholds, prompt, token cap, VAD filter settings, the encoder padding). The
reply (``asr_reply``) has ``meta.segments``: per segment its ``no_speech_prob``, ``avg_logprob``,
``compression_ratio`` and words ``[text, start_s, end_s, probability]``; or ``meta.error``.
``meta.op = "info"`` returns the model (directory, device, compute type), the workers and the
statistics (requests, errors, sessions seen).

Its client :class:`RemoteWhisper`; :class:`RayWhisper` is the client of the same model as a Ray Serve
deployment (``asr.server = "ray://HOST:PORT/whisper"``, engine/ray_serve.py), with the same
interface, allow-list and segment JSON; :func:`open_whisper` picks one by the address's scheme.

Concurrency: ``--workers`` decode threads share the one model (CTranslate2 runs that many
requests at a time: ``WhisperModel(num_workers=...)``); requests are served first come, first
served, at most ``max_queue`` queued (beyond: an immediate "overloaded" reply). Only the main
thread touches the socket. Like the fusion server, it binds loopback unless ``--allow-remote``.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from ..perception.asr import AsrOptions, DecodeError, load_whisper
from .messages import Message, MessageError, decode, encode, now_ns
from .rpc import bind_router, send_before
from .security import is_local_address

log = logging.getLogger("sentistream.asr_server")

DEFAULT_ADDRESS = "tcp://127.0.0.1:5561"
TOPIC = "asr"
MAX_CLIP_S = 60.0  # Whisper reads 30 s windows; a session never sends more than its buffer cap
#: Decode options a client may set, with their types (anything else is refused).
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "language": (str, type(None)),
    "beam_size": (int,),
    "best_of": (int,),
    "temperature": (int, float),
    "word_timestamps": (bool,),
    "condition_on_previous_text": (bool,),
    "vad_filter": (bool,),
    "no_speech_threshold": (int, float),
    "log_prob_threshold": (int, float),
    "compression_ratio_threshold": (int, float),
    "initial_prompt": (str, type(None)),
    "max_new_tokens": (int, type(None)),
    "vad_parameters": (dict, type(None)),
    "encoder_pad_s": (int, float),
}
VAD_KEYS = {"threshold", "min_speech_duration_ms", "min_silence_duration_ms", "speech_pad_ms"}


class RemoteAsrError(DecodeError):
    """The Whisper server answered with an error, or did not answer in time."""


def open_whisper(options: AsrOptions) -> Any:
    """The recogniser's Whisper: a client of ``options.server`` when one is set (``tcp://`` /
    ``ipc://``: `sentistream serve-asr`; ``ray://HOST:PORT/APP``: the Whisper deployment of
    `sentistream serve --engine ray`, engine/ray_client.py), else the local model."""
    if options.server.startswith("ray://"):
        return RayWhisper(options.server, options.server_timeout_s)
    if options.server:
        return RemoteWhisper(options.server, options.server_timeout_s)
    return load_whisper(options)


def check_options(options: Any) -> dict[str, Any]:
    """The request's decode options, validated against the allow-list (ValueError otherwise)."""
    if not isinstance(options, dict):
        raise ValueError("meta.options must be an object")
    out: dict[str, Any] = {}
    for key, value in options.items():
        types = OPTION_TYPES.get(key)
        if types is None:
            raise ValueError(f"unknown decode option {key!r}")
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"decode option {key!r}: bad type {type(value).__name__}")
        out[key] = value
    vad = out.get("vad_parameters")
    if vad is not None:
        if set(vad) - VAD_KEYS or not all(isinstance(v, (int, float)) for v in vad.values()):
            raise ValueError(f"vad_parameters: only {sorted(VAD_KEYS)} (numbers)")
    if not 1 <= int(out.get("beam_size", 1)) <= 16 or not 1 <= int(out.get("best_of", 1)) <= 16:
        raise ValueError("beam_size and best_of must be in 1..16")
    if out.get("max_new_tokens") is not None and not 1 <= out["max_new_tokens"] <= 448:
        raise ValueError("max_new_tokens must be in 1..448")
    if len(out.get("initial_prompt") or "") > 2000:
        raise ValueError("initial_prompt longer than 2000 characters")
    return out


def check_request(msg: Message) -> tuple[np.ndarray, dict[str, Any]]:
    """A ``transcribe`` request's clip and validated decode options; ValueError with the reason
    for anything else (the ZeroMQ server and the Ray deployment check requests alike)."""
    if len(msg.arrays) != 1 or msg.arrays[0].dtype != np.float32 or msg.arrays[0].ndim != 1:
        raise ValueError("transcribe needs one float32 [N] array (16 kHz mono)")
    audio = msg.arrays[0]
    if audio.size > MAX_CLIP_S * 16000:
        raise ValueError(f"clip longer than {MAX_CLIP_S:g} s")
    if not np.isfinite(audio).all():
        raise ValueError("the clip holds NaN or infinite samples")
    return audio, check_options(msg.meta.get("options", {}))


def transcribe_request(seq: int, audio: np.ndarray, encoder_pad_s: float, kwargs: dict[str, Any]) -> Message:
    """A client's ``transcribe`` request: the clip as float32 and the decode options, checked
    against the allow-list before anything is sent (ValueError)."""
    options = dict(kwargs, encoder_pad_s=float(encoder_pad_s))
    vad = options.get("vad_parameters")
    if vad is not None and not isinstance(vad, dict):
        options["vad_parameters"] = {k: getattr(vad, k) for k in VAD_KEYS}
    clip = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
    meta = {"op": "transcribe", "options": check_options(options)}
    return Message("asr_request", TOPIC, seq, now_ns(), 0.0, [clip], meta=meta)


def decode_request(model: Any, audio: np.ndarray, options: dict[str, Any]) -> list[dict[str, Any]]:
    """One checked request decoded on a local WhisperModel: its segments as JSON."""
    from ..perception.asr import transcribe_segments

    opts = dict(options)
    pad = float(opts.pop("encoder_pad_s", 0.0))
    vad = opts.pop("vad_parameters", None)
    if vad is not None:
        from faster_whisper.vad import VadOptions

        opts["vad_parameters"] = VadOptions(**vad)
    return segments_to_json(transcribe_segments(model, audio, pad, **opts))


# --------------------------------------------------------------------------- results
@dataclass
class RemoteWord:
    word: str
    start: float
    end: float
    probability: float


@dataclass
class RemoteSegment:
    """The fields of faster-whisper's Segment that perception.asr reads."""

    text: str
    no_speech_prob: float
    avg_logprob: float
    compression_ratio: float
    words: list[RemoteWord] = field(default_factory=list)


def segments_to_json(segments) -> list[dict[str, Any]]:
    return [
        {
            "text": s.text,
            "no_speech_prob": float(s.no_speech_prob),
            "avg_logprob": float(s.avg_logprob),
            "compression_ratio": float(s.compression_ratio),
            "words": [[w.word, float(w.start), float(w.end), float(w.probability)] for w in (s.words or [])],
        }
        for s in segments
    ]


def segments_from_json(data: Any) -> list[RemoteSegment]:
    if not isinstance(data, list):
        raise RemoteAsrError("malformed reply: segments is not a list")
    out = []
    for s in data:
        words = [RemoteWord(str(w[0]), float(w[1]), float(w[2]), float(w[3])) for w in s.get("words", [])]
        out.append(
            RemoteSegment(
                str(s.get("text", "")),
                float(s["no_speech_prob"]),
                float(s["avg_logprob"]),
                float(s["compression_ratio"]),
                words,
            )
        )
    return out


# --------------------------------------------------------------------------- server
@dataclass
class AsrServerStats:
    requests: int = 0
    errors: int = 0
    overloaded: int = 0
    audio_s: float = 0.0
    decode_s: float = 0.0
    sessions: set = field(default_factory=set)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "overloaded": self.overloaded,
            "audio_s": round(self.audio_s, 2),
            "decode_s": round(self.decode_s, 2),
            "sessions_seen": len(self.sessions),
        }


class WhisperServer:
    """One WhisperModel, ``workers`` decode threads, a ROUTER socket. ``serve_forever()`` or ``start()``."""

    def __init__(
        self,
        options=None,
        address: str = DEFAULT_ADDRESS,
        workers: int = 2,
        max_queue: int = 256,
        allow_remote: bool = False,
        model=None,
        context: zmq.Context | None = None,
    ):
        from ..perception.asr import default_model_dir, resolve_device

        if not allow_remote and not is_local_address(address):
            raise ValueError(
                f"refusing to bind {address}: requests are not authenticated; bind a "
                "loopback address (tcp://127.0.0.1:PORT) or pass --allow-remote"
            )
        self.options = options or AsrOptions()
        if self.options.server:
            raise ValueError("the Whisper server loads its model itself: asr.server must be empty here")
        self.workers = max(1, int(workers))
        self.model = model if model is not None else load_whisper(self.options, num_workers=self.workers)
        device, compute_type = resolve_device(self.options)
        self.info = {
            "model_dir": self.options.model_dir or default_model_dir(),
            "device": device,
            "compute_type": compute_type,
            "workers": self.workers,
            "pid": os.getpid(),
        }
        self.max_queue = int(max_queue)
        self.ctx = context or zmq.Context.instance()
        self.sock, self.address = bind_router(self.ctx, address)
        self.stats = AsrServerStats()
        self.stopping = threading.Event()
        self._jobs: queue.Queue = queue.Queue(maxsize=self.max_queue)
        self._done: queue.Queue = queue.Queue()
        self._threads = [
            threading.Thread(target=self._worker, daemon=True, name=f"whisper-{i}") for i in range(self.workers)
        ]
        for t in self._threads:
            t.start()
        self._thread: threading.Thread | None = None

    # ---- decode threads --------------------------------------------------
    def _worker(self) -> None:
        while not self.stopping.is_set():
            try:
                identity, msg, opts = self._jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            t0 = time.perf_counter()
            try:
                meta: dict[str, Any] = {"segments": decode_request(self.model, msg.arrays[0], opts)}
            except Exception as exc:  # a bad request must not stop the server
                meta = {"error": f"decode failed: {type(exc).__name__}: {exc}"}
            meta["decode_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
            self._done.put((identity, Message("asr_reply", TOPIC, msg.seq, msg.t_capture_ns, 0.0, meta=meta)))

    # ---- the socket (main thread only) -----------------------------------
    def _reply(self, identity: bytes, msg: Message) -> None:
        try:
            self.sock.send_multipart([identity, *encode(msg)], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass  # that session is not reading
        except zmq.ZMQError as exc:
            log.debug("reply to a gone session dropped: %s", exc)

    def _error(self, identity: bytes, seq: int, error: str) -> None:
        self.stats.errors += 1
        self._reply(identity, Message("asr_reply", TOPIC, max(0, seq), now_ns(), 0.0, meta={"error": error}))

    def _handle(self, frames: list) -> None:
        identity, body = frames[0].bytes, frames[1:]
        try:
            msg = decode(body)
        except MessageError as exc:
            log.warning("malformed request dropped: %s", exc)
            self._error(identity, 0, f"malformed request: {exc}")
            return
        self.stats.sessions.add(identity)
        op = msg.meta.get("op")
        if msg.kind != "asr_request":
            self._error(identity, msg.seq, f"expected an asr_request, got {msg.kind}")
        elif op == "info":
            self._reply(
                identity,
                Message(
                    "asr_reply",
                    TOPIC,
                    msg.seq,
                    msg.t_capture_ns,
                    0.0,
                    meta={**self.info, "stats": self.stats.snapshot()},
                ),
            )
        elif op != "transcribe":
            self._error(identity, msg.seq, f"unknown op {op!r} (transcribe, info)")
        else:
            try:
                _, opts = check_request(msg)
            except ValueError as exc:
                self._error(identity, msg.seq, str(exc))
                return
            try:
                self._jobs.put_nowait((identity, msg, opts))
            except queue.Full:
                self.stats.overloaded += 1
                self._error(identity, msg.seq, "overloaded: too many queued requests")
                return
            self.stats.requests += 1
            self.stats.audio_s += msg.arrays[0].size / 16000

    def step(self, timeout_ms: int = 20) -> None:
        if self.sock.poll(timeout_ms):
            while True:
                try:
                    frames = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                if len(frames) < 2:
                    continue
                self._handle(frames)
        while True:
            try:
                identity, reply = self._done.get_nowait()
            except queue.Empty:
                break
            self.stats.decode_s += float(reply.meta.get("decode_ms", 0.0)) / 1e3
            if "error" in reply.meta:
                self.stats.errors += 1
            self._reply(identity, reply)

    def serve_forever(self) -> None:
        while not self.stopping.is_set():
            self.step()

    def start(self) -> WhisperServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="whisper-server")
        self._thread.start()
        return self

    def close(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for t in self._threads:
            t.join(timeout=5)
        self.sock.close(linger=0)


# --------------------------------------------------------------------------- client
class RemoteWhisper:
    """Stands in for a faster-whisper ``WhisperModel`` in ``perception.asr``: ``transcribe()`` sends
    the clip to a Whisper server and returns ``(segments, info)`` like the real one."""

    _ids = itertools.count(1)

    def __init__(self, address: str, timeout_s: float = 10.0, context: zmq.Context | None = None):
        self.address = address
        self.timeout_s = float(timeout_s)
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.connect(address)
        self._seq = int(os.getpid() % 1000) * 1_000_000 + next(self._ids) * 10_000
        self._lock = threading.Lock()

    def _call(self, msg: Message) -> Message:
        with self._lock:
            deadline = time.monotonic() + self.timeout_s
            if not send_before(self.sock, msg, deadline):
                raise RemoteAsrError(f"Whisper server {self.address} is not reachable")
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not self.sock.poll(max(1, int(left * 1000))):
                    raise RemoteAsrError(f"Whisper server {self.address} did not answer within {self.timeout_s:g} s")
                try:
                    reply = decode(self.sock.recv_multipart(copy=False))
                except MessageError as exc:
                    log.warning("malformed reply from the Whisper server dropped: %s", exc)
                    continue
                if reply.seq == msg.seq:  # earlier replies that came too late are skipped
                    break
        if "error" in reply.meta:
            raise RemoteAsrError(str(reply.meta["error"]))
        return reply

    def info(self) -> dict[str, Any]:
        self._seq += 1
        return dict(self._call(Message("asr_request", TOPIC, self._seq, now_ns(), 0.0, meta={"op": "info"})).meta)

    def decode_segments(self, audio: np.ndarray, encoder_pad_s: float, **kwargs: Any) -> list[Any]:
        """perception.asr.SegmentDecoder: one decode on the server."""
        return self.transcribe(audio, encoder_pad_s, **kwargs)[0]

    def transcribe(self, audio: np.ndarray, encoder_pad_s: float = 0.0, **kwargs: Any):
        self._seq += 1
        msg = transcribe_request(self._seq, audio, encoder_pad_s, kwargs)
        return segments_from_json(self._call(msg).meta.get("segments")), None

    def close(self) -> None:
        self.sock.close(linger=0)


class RayWhisper:
    """Stands in for a faster-whisper ``WhisperModel`` in perception/asr.py, as
    :class:`RemoteWhisper` does for `serve-asr`: each decode is one HTTP request to the Whisper
    deployment of `sentistream serve --engine ray --whisper` (engine/ray_serve.py), at
    ``asr.server = "ray://HOST:PORT/whisper"``. It imports no Ray.

    Wire: the framed message of engine/ray_client.py (``b"SSRF"``, frame lengths, the engine's
    multipart message), an ``asr_request`` with one ``float32 [N]`` array (the 16 kHz mono clip,
    raw bytes) and ``meta.op = "transcribe"`` with ``meta.options`` (the allow-list above, checked
    here before sending and by the replica again); the reply is an ``asr_reply`` whose
    ``meta.segments`` are JSON (:func:`segments_to_json`), or ``meta.error`` (HTTP 400 malformed,
    500 a failed decode, 503 no replica). A failure or a timeout raises :class:`RemoteAsrError` (a
    DecodeError): the recogniser skips that decode and goes on."""

    name = "ray"

    _ids = itertools.count(1)

    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        from .ray_client import ServeHttp

        self.address = address
        self.timeout_s = float(timeout_s)
        self._http = ServeHttp(address, RemoteAsrError)
        self.last_meta: dict[str, Any] = {}

    def info(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The served Whisper (model directory, device, compute type), the replica and its counts."""
        msg = Message("asr_request", TOPIC, next(self._ids), now_ns(), 0.0, meta={"op": "info"})
        return dict(self._http.post(msg, self.timeout_s if timeout_s is None else timeout_s).meta)

    def decode_segments(self, audio: np.ndarray, encoder_pad_s: float, **kwargs: Any) -> list[Any]:
        """perception.asr.SegmentDecoder: one decode on a Whisper replica."""
        return self.transcribe(audio, encoder_pad_s, **kwargs)[0]

    def transcribe(self, audio: np.ndarray, encoder_pad_s: float = 0.0, **kwargs: Any):
        msg = transcribe_request(next(self._ids), audio, encoder_pad_s, kwargs)
        reply = self._http.post(msg, self.timeout_s)
        self.last_meta = {k: v for k, v in reply.meta.items() if k != "segments"}
        return segments_from_json(reply.meta.get("segments")), None

    def close(self) -> None:
        self._http.close()
