"""Typed messages carried as ZeroMQ multipart frames.

Wire format (one message = one multipart ZeroMQ message):

    frame 0   topic, ASCII (the stream name; SUB sockets filter on it)
    frame 1   header, UTF-8 JSON (see `Header`)
    frame 2.. one raw buffer per array, C-contiguous, sent zero-copy

Arrays never go through pickle: the header names each array's dtype (from a
short allow-list) and shape, and the decoder checks that the buffer has exactly
that many bytes before it wraps it with `numpy.frombuffer`. Anything that does
not parse raises `MessageError`, which stages count and drop.

The decoder never allocates from a size the sender only declares: arrays are
views on the received buffers, sizes are checked (with Python integers, which
cannot overflow) before anything else, and floating-point arrays holding NaN or
infinity, or a header holding NaN/Infinity, are refused like any other
malformed message (tests/test_fuzz_decoder.py fuzzes all of this).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WIRE_VERSION = 1

# Message kinds used by the engine; unknown kinds are refused by the decoder.
KINDS = frozenset(
    {
        "video_frame",  # uint8 HxWx3 RGB
        "audio_chunk",  # float32 N mono samples
        "face_features",  # float32 D vector (+ meta: present, reason)
        "audio_features",  # float32 TxD frames + float64 T frame times
        "words",  # no array; meta: committed/partial words
        "voice_affect",  # no array; meta: the voice's valence over [t0_s, t1_s] (payloads.VoicePayload)
        "event",  # fusion output; meta carries the JSON event
        "eos",  # end of stream
        "fusion_request",  # fusion server: a window's padded tensors + bool masks (engine/fusion_server.py)
        "fusion_reply",  # fusion server: float32 scores [B] + contributions [B, 3], or meta.error
        "asr_request",  # Whisper server: float32 [N] 16 kHz clip + meta.options (engine/asr_server.py)
        "asr_reply",  # Whisper server: meta.segments (words with times), or meta.error
    }
)

ALLOWED_DTYPES = frozenset({"uint8", "int16", "int32", "int64", "float32", "float64", "bool"})
MAX_ARRAYS = 8
MAX_NDIM = 4
MAX_HEADER_BYTES = 1 << 20
# 8K RGB frame = 99.5 MB; anything larger is refused before any allocation.
MAX_ARRAY_BYTES = 7680 * 4320 * 3 + 1024
# The largest single frame a socket accepts (ZMQ_MAXMSGSIZE): a peer that sends
# more is disconnected by ZeroMQ before the frame is buffered.
MAX_FRAME_BYTES = max(MAX_ARRAY_BYTES, MAX_HEADER_BYTES)


class MessageError(ValueError):
    """A frame sequence that is not a valid sentistream message."""


def now_ns() -> int:
    """The one clock every process shares.

    CLOCK_MONOTONIC is system-wide on Linux, so timestamps taken in different
    processes on one host are directly comparable (latencies across stages).
    """
    return time.monotonic_ns()


@dataclass
class Message:
    """One message on a stream.

    `t_capture_ns` is when the data entered the engine (shared monotonic clock);
    `t_media_s` is its position on the session's stream clock (seconds since
    the session started, or the media timestamp of a file), which is what the
    fusion windows are cut on, so a file replayed faster than real time gives
    the same windows. `trace` records when each stage handled the data.
    """

    kind: str
    stream: str
    seq: int
    t_capture_ns: int
    t_media_s: float
    arrays: list[np.ndarray] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    trace: dict[str, int] = field(default_factory=dict)

    def encode(self) -> list[Any]:
        return encode(self)


def _array_descr(a: np.ndarray) -> dict[str, Any]:
    return {"dtype": str(a.dtype), "shape": list(a.shape)}


def encode(msg: Message) -> list[Any]:
    """Message -> multipart frames. Arrays are passed as buffers (zero-copy)."""
    if msg.kind not in KINDS:
        raise MessageError(f"unknown message kind {msg.kind!r}")
    # np.ascontiguousarray would turn a 0-d array into shape (1,): keep the shape.
    arrays = [np.ascontiguousarray(a).reshape(np.shape(a)) for a in msg.arrays]
    for a in arrays:
        if str(a.dtype) not in ALLOWED_DTYPES:
            raise MessageError(f"dtype {a.dtype} is not allowed on the wire")
    header = {
        "v": WIRE_VERSION,
        "kind": msg.kind,
        "stream": msg.stream,
        "seq": int(msg.seq),
        "t_capture_ns": int(msg.t_capture_ns),
        "t_media_s": float(msg.t_media_s),
        "arrays": [_array_descr(a) for a in arrays],
        "meta": msg.meta,
        "trace": {k: int(v) for k, v in msg.trace.items()},
    }
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return [msg.stream.encode("ascii"), head, *[memoryview(a).cast("B") if a.size else b"" for a in arrays]]


def _frame_bytes(frame: Any) -> memoryview:
    # zmq.Frame (copy=False receive) exposes .buffer; bytes/memoryview pass through.
    buf = getattr(frame, "buffer", frame)
    try:
        view = memoryview(buf)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except (TypeError, ValueError) as exc:
        raise MessageError(f"a frame is not a byte buffer: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise MessageError(f"header holds {name}: NaN and Infinity are not allowed")


def decode(frames: list[Any]) -> Message:
    """Multipart frames -> Message, validating everything; raises MessageError."""
    if not isinstance(frames, (list, tuple)) or len(frames) < 2:
        raise MessageError("a message needs at least a topic and a header frame")
    topic_view = _frame_bytes(frames[0])
    if topic_view.nbytes > 256:
        raise MessageError(f"topic of {topic_view.nbytes} bytes is too long")
    try:
        topic = bytes(topic_view).decode("ascii")
    except UnicodeDecodeError as exc:
        raise MessageError(f"bad topic frame: {exc}") from None
    head_view = _frame_bytes(frames[1])
    if head_view.nbytes > MAX_HEADER_BYTES:
        raise MessageError(f"header of {head_view.nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(head_view), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MessageError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise MessageError("header is not a JSON object")
    if header.get("v") != WIRE_VERSION or isinstance(header.get("v"), bool):
        raise MessageError(f"unsupported wire version {header.get('v')!r}")
    kind = header.get("kind")
    if kind not in KINDS:
        raise MessageError(f"unknown message kind {kind!r}")
    stream = header.get("stream")
    if not isinstance(stream, str) or stream != topic:
        raise MessageError(f"header stream {stream!r} does not match topic {topic!r}")
    seq, t_cap, t_media = header.get("seq"), header.get("t_capture_ns"), header.get("t_media_s")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise MessageError(f"bad seq {seq!r}")
    if not isinstance(t_cap, int) or isinstance(t_cap, bool) or t_cap < 0:
        raise MessageError(f"bad t_capture_ns {t_cap!r}")
    if not isinstance(t_media, (int, float)) or isinstance(t_media, bool) or not math.isfinite(t_media):
        raise MessageError(f"bad t_media_s {t_media!r}")
    meta = header.get("meta", {})
    trace = header.get("trace", {})
    if not isinstance(meta, dict):
        raise MessageError("meta is not an object")
    if not isinstance(trace, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in trace.items()
    ):
        raise MessageError("trace must map stage names to integer ns")
    descrs = header.get("arrays", [])
    if not isinstance(descrs, list) or len(descrs) > MAX_ARRAYS:
        raise MessageError("bad array list")
    if len(frames) != 2 + len(descrs):
        raise MessageError(f"header declares {len(descrs)} arrays but {len(frames) - 2} buffers follow")
    arrays: list[np.ndarray] = []
    for i, descr in enumerate(descrs):
        arrays.append(_decode_array(descr, frames[2 + i], i))
    return Message(
        kind=kind,
        stream=stream,
        seq=seq,
        t_capture_ns=t_cap,
        t_media_s=float(t_media),
        arrays=arrays,
        meta=meta,
        trace=dict(trace),
    )


def _decode_array(descr: Any, frame: Any, index: int) -> np.ndarray:
    if not isinstance(descr, dict):
        raise MessageError(f"array {index}: descriptor is not an object")
    dtype, shape = descr.get("dtype"), descr.get("shape")
    if dtype not in ALLOWED_DTYPES:
        raise MessageError(f"array {index}: dtype {dtype!r} not allowed")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_ARRAY_BYTES for s in shape)
    ):
        raise MessageError(f"array {index}: bad shape {shape!r}")
    itemsize = np.dtype(dtype).itemsize
    # Python ints cannot overflow, so a huge declared shape is caught here, not by numpy.
    nbytes = math.prod(shape) * itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise MessageError(f"array {index}: declared size {nbytes} bytes exceeds the limit")
    buf = _frame_bytes(frame)
    if buf.nbytes != nbytes:
        raise MessageError(f"array {index}: buffer has {buf.nbytes} bytes, header declares {nbytes}")
    if nbytes == 0:
        return np.zeros(shape, dtype=dtype)
    array = np.frombuffer(buf, dtype=dtype).reshape(shape)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise MessageError(f"array {index}: {bad} non-finite value(s) (NaN or Inf) in {dtype}{list(shape)}")
    return array
