"""The client of the fusion model on Ray Serve (engine/ray_serve.py): :class:`RayFusion`, a
fusion backend with :class:`~sentistream.engine.fusion_client.RemoteFusion`'s interface, the
request framing both sides share and :class:`ServeHttp`, the HTTP transport (also of the Whisper
application's client, engine/asr_server.RayWhisper). It imports no Ray: a session needs only the
standard library.

Address: ``fusion.server = "ray://HOST:PORT/APP"``, where HOST:PORT is the Ray Serve HTTP proxy
(``[ray] http_port``, default 8000) and APP the application's route prefix (``[ray] app``,
default ``fusion``). ``ray://`` here names a Serve application, not the Ray Client port (10001):
a session never joins the cluster, it only sends HTTP requests to the proxy.

Wire: an HTTP POST whose body is the engine's own multipart message (engine/messages.py: topic,
JSON header, one raw buffer per array; the header lists each array's dtype and shape, no pickle)
framed as ``b"SSRF"``, a frame count and the frame lengths (uint32, little-endian), then the frames.
A request is a ``fusion_request`` carrying the six window arrays (text / audio / vision
``float32 [B, L, D]`` and their ``bool [B, L]`` masks) with ``B`` windows, or ``meta.op = "info"``
(no arrays); the reply is a ``fusion_reply`` with ``score float32 [B]`` and ``contributions float32
[B, 3]``, or ``meta.error`` (HTTP 400 for a malformed request, 500 for a failed forward pass, 503
while no replica is up). Inside the cluster Ray moves the request body between the proxy and the
replica with its own serialisation; user data is never pickled by this code.

Windows per request: :meth:`RayFusion.submit` queues a window and :meth:`RayFusion.flush` (called
by :meth:`RayFusion.collect`, or at ``max_windows``) sends every queued window as one request, so a
client that carries several sessions (a gateway, the scale-out bench) pays Ray's per-request cost
(about 8 CPU-ms, half in the proxy, half in the replica) once for several windows. A fusion stage's
synchronous call (``remote(inputs)``) sends its one window at once.
"""

from __future__ import annotations

import http.client
import itertools
import queue
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .config import parse_ray_address
from .fusion_wire import RemoteFusionError, inputs_to_arrays
from .messages import Message, MessageError, decode, encode, now_ns

SCHEME = "ray://"
MAGIC = b"SSRF"
MAX_FRAMES = 16
MAX_BODY = 256 << 20  # largest request body (bytes): 256 MiB
TOPIC = "fusion"


# --------------------------------------------------------------------------- framing
def frame_body(msg: Message) -> bytes:
    """A message -> one HTTP body: magic, frame count, frame lengths, frames."""
    frames = [bytes(f) for f in encode(msg)]
    head = MAGIC + struct.pack(f"<I{len(frames)}I", len(frames), *(len(f) for f in frames))
    return head + b"".join(frames)


def unframe_body(body: bytes) -> Message:
    """One HTTP body -> a message; raises MessageError with the reason for anything malformed."""
    if len(body) > MAX_BODY:
        raise MessageError(f"body of {len(body)} bytes is over the {MAX_BODY}-byte limit")
    if len(body) < 8 or body[:4] != MAGIC:
        raise MessageError("not a sentistream request (the body must start with b'SSRF' and a frame count)")
    (n,) = struct.unpack_from("<I", body, 4)
    if not 2 <= n <= MAX_FRAMES:
        raise MessageError(f"frame count must be 2..{MAX_FRAMES}, not {n}")
    end = 8 + 4 * n
    if len(body) < end:
        raise MessageError("body ends inside its frame lengths")
    lengths = struct.unpack_from(f"<{n}I", body, 8)
    if end + sum(lengths) != len(body):
        raise MessageError(f"frame lengths add up to {sum(lengths)} bytes, the body carries {len(body) - end}")
    view = memoryview(body)
    frames = []
    for length in lengths:
        frames.append(view[end : end + length])
        end += length
    return decode(frames)


def parse_address(address: str) -> tuple[str, int, str]:
    """``ray://HOST:PORT/APP`` -> (host, port, "/APP"); raises ValueError naming the form."""
    return parse_ray_address(address)


def collate_arrays(requests: list[list[np.ndarray]]) -> tuple[list[np.ndarray], list[int]]:
    """Several windows' six arrays -> one request's six arrays (each sequence zero-padded, its mask
    False, to the longest of its kind) and the window count of each."""
    counts = [int(r[0].shape[0]) for r in requests]
    if len(requests) == 1:
        return list(requests[0]), counts
    out: list[np.ndarray] = []
    for i in range(3):
        length = max(r[i].shape[1] for r in requests)
        seqs, masks = [], []
        for r in requests:
            x, m = r[i], r[i + 3]
            pad = length - x.shape[1]
            seqs.append(np.pad(x, ((0, 0), (0, pad), (0, 0))) if pad else x)
            masks.append(np.pad(m, ((0, 0), (0, pad))) if pad else m)
        out.append(np.concatenate(seqs, axis=0))
        out.append(np.concatenate(masks, axis=0))
    return [out[0], out[2], out[4], out[1], out[3], out[5]], counts


# --------------------------------------------------------------------------- HTTP
class ServeHttp:
    """POSTs framed messages to one Serve application (a kept-alive connection per thread);
    every failure, and a reply with ``meta.error``, raises ``error`` naming the address."""

    def __init__(self, address: str, error: type[Exception]) -> None:
        self.host, self.port, self.path = parse_address(address)
        self.address = address
        self.error = error
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port)
            self._local.conn = conn
        return conn

    def post(self, msg: Message, timeout_s: float) -> Message:
        body = frame_body(msg)
        for attempt in range(2):  # a kept-alive connection the proxy closed: once more on a new one
            conn = self._conn()
            conn.timeout = timeout_s
            try:
                if conn.sock is not None:
                    conn.sock.settimeout(timeout_s)
                conn.request("POST", self.path, body=body, headers={"Content-Type": "application/octet-stream"})
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                break
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                if attempt or isinstance(exc, TimeoutError):
                    raise self.error(f"Ray Serve {self.address}: {exc!r}") from None
        try:
            reply = unframe_body(data)
        except MessageError:
            text = data[:300].decode(errors="replace")
            raise self.error(f"Ray Serve {self.address}: HTTP {status}: {text}") from None
        if "error" in reply.meta:
            raise self.error(f"Ray Serve {self.address}: HTTP {status}: {reply.meta['error']}")
        return reply

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


# --------------------------------------------------------------------------- fusion client
class RayFusion:
    """A fusion backend that asks the fusion deployment on Ray Serve.

    Synchronous use (a fusion stage): ``out = remote(inputs)``. Asynchronous use (many windows in
    flight): ``rid = remote.submit(inputs)`` then ``remote.collect(timeout_s)``; windows submitted
    between two flushes travel as one request.
    """

    name = "ray"

    _ids = itertools.count(1)

    def __init__(self, address: str, timeout_s: float = 2.0, max_windows: int = 64, workers: int = 4):
        self.host, self.port, self.path = parse_address(address)
        self.address = address
        self.timeout_s = float(timeout_s)
        self.max_windows = int(max_windows)
        self.reason = f"Ray Serve {address}"
        self.last_meta: dict[str, Any] = {}
        self._info: dict | None = None
        self._http = ServeHttp(address, RemoteFusionError)
        self._pending: list[tuple[int, Any]] = []
        self._done: queue.Queue[tuple[int, Any, dict]] = queue.Queue()
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(workers)), thread_name_prefix="ray-fusion")
        self._closed = False

    # ---- HTTP ------------------------------------------------------------
    def _post(self, msg: Message, timeout_s: float) -> Message:
        return self._http.post(msg, timeout_s)

    # ---- requests --------------------------------------------------------
    def info(self, timeout_s: float | None = None, refresh: bool = False) -> dict[str, Any]:
        """The served model's identity (name, weights hash, dims) and the answering replica."""
        if self._info is not None and not refresh:
            return self._info
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        msg = Message("fusion_request", TOPIC, next(self._ids), now_ns(), 0.0, meta={"op": "info"})
        self._info = dict(self._post(msg, timeout_s).meta)
        return self._info

    def infer_arrays(self, arrays: list[np.ndarray], timeout_s: float | None = None) -> Message:
        """One request of B windows (the six arrays); the reply message (score [B], contributions [B, 3])."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        meta = {"op": "infer", "timeout_ms": round(timeout_s * 1e3, 3)}
        msg = Message("fusion_request", TOPIC, next(self._ids), now_ns(), 0.0, list(arrays), meta=meta)
        reply = self._post(msg, timeout_s)
        if len(reply.arrays) != 2 or reply.arrays[0].shape[0] != arrays[0].shape[0]:
            raise RemoteFusionError(f"Ray Serve {self.address}: a reply without {arrays[0].shape[0]} results")
        return reply

    @staticmethod
    def _outputs(reply: Message, start: int, n: int):
        import torch

        from ..models.base import FusionOutput

        score, contrib = (np.array(a[start : start + n], copy=True) for a in reply.arrays)
        return FusionOutput(torch.from_numpy(score), torch.from_numpy(contrib), {})

    def __call__(self, inputs):
        reply = self.infer_arrays(inputs_to_arrays(inputs))
        self.last_meta = reply.meta
        return self._outputs(reply, 0, int(reply.arrays[0].shape[0]))

    def submit(self, inputs, t_media_s: float = 0.0) -> int:
        """Queue one window (or a batch of them); sent with the others at the next flush."""
        rid = next(self._ids)
        self._pending.append((rid, inputs_to_arrays(inputs)))
        if sum(a[0].shape[0] for _, a in self._pending) >= self.max_windows:
            self.flush()
        return rid

    def flush(self) -> int:
        """Send every queued window as one request (in a worker thread); returns how many."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, []
        self._pool.submit(self._run, batch)
        return len(batch)

    def _run(self, batch: list[tuple[int, list[np.ndarray]]]) -> None:
        try:
            arrays, counts = collate_arrays([a for _, a in batch])
            reply = self.infer_arrays(arrays)
        except Exception as exc:  # RemoteFusionError, a timeout: every window of it failed
            err = exc if isinstance(exc, RemoteFusionError) else RemoteFusionError(repr(exc))
            for rid, _ in batch:
                self._done.put((rid, err, {}))
            return
        start = 0
        meta = {**reply.meta, "windows": int(reply.arrays[0].shape[0])}
        for (rid, _), n in zip(batch, counts):
            self._done.put((rid, self._outputs(reply, start, n), meta))
            start += n

    def collect(self, timeout_s: float = 0.0, flush: bool = True) -> list[tuple[int, Any, dict]]:
        """Flush (unless told not to: a caller that sends on its own clock), then the replies that
        have arrived: (request id, FusionOutput or RemoteFusionError, meta)."""
        if flush:
            self.flush()
        out = []
        try:
            out.append(self._done.get(timeout=timeout_s) if timeout_s > 0 else self._done.get_nowait())
            while True:
                out.append(self._done.get_nowait())
        except queue.Empty:
            pass
        return out

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "reason": self.reason}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()


def wait_ready(address: str, timeout_s: float = 120.0, client: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Until the application at ``address`` answers ``info``; returns it (RemoteFusionError after
    timeout_s). ``client(address)`` makes the client that asks (default :class:`RayFusion`; the
    Whisper application's is engine/asr_server.RayWhisper)."""
    probe = client(address) if client is not None else RayFusion(address, timeout_s=5.0)
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    try:
        while time.monotonic() < deadline:
            try:
                return probe.info(timeout_s=5.0)
            except RuntimeError as exc:  # RemoteFusionError, RemoteAsrError: not (yet) answering
                last = exc
                time.sleep(0.25)
    finally:
        probe.close()
    raise RemoteFusionError(f"{address} not ready within {timeout_s:g} s: {last}")
