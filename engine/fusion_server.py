"""The fusion server: one process, one model copy, many sessions, dynamically batched.

    sentistream serve --address tcp://127.0.0.1:5560 --max-batch 64 --max-queue-delay-us 2000

Sessions (fusion stages with ``fusion.server = "tcp://127.0.0.1:5560"``, or any :class:`RemoteFusion`)
connect DEALER sockets to the server's ROUTER socket and send one request per window: the engine's
multipart message (engine/messages.py: topic, JSON header, one raw buffer per array; no pickle)
of kind ``fusion_request`` carrying six arrays, text / audio / vision ``float32 [B, L, D]`` and their
``bool [B, L]`` masks. The reply (``fusion_reply``) carries ``score float32 [B]`` and
``contributions float32 [B, 3]``, or ``meta.error``. ``meta.op = "info"`` (no arrays) asks for the
served model's identity (name, weights hash, dims), the backend and the batcher's statistics.

Dynamic batching, as Triton's dynamic batcher: a request waits at most ``max_queue_delay_us`` for
others to join it; a batch runs as soon as ``max_batch`` windows are queued or the oldest request
has waited that long. Windows of different lengths are padded to common bucketed lengths
(engine/backends.py), so one forward pass serves them all.

Isolation: requests are queued per session (per connection) and batches are filled round-robin
across sessions, one request per session per turn, so a session that floods the server gets at most
its fair share of each batch and the others wait no longer than the queue delay plus the batch in
flight. A session's queue is bounded (``max_queue_per_session``): beyond it, its new requests are
answered at once with an "overloaded" error, never queued. A request carries its client's
``timeout_ms``: one that waited longer is answered "expired" instead of being run (its client has
already moved on), so a backlog never costs the sessions behind it. A session that stops reading its
replies only fills its own socket buffer (ROUTER drops what it cannot deliver). Malformed requests
get an error reply and are counted; the server goes on.

Security: the server binds 127.0.0.1 by default and refuses any other interface unless told
``--allow-remote``: requests are not authenticated.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from .fusion_wire import DEFAULT_ADDRESS, TOPIC, arrays_to_inputs
from .messages import Message, MessageError, decode, encode, now_ns
from .rpc import bind_router
from .security import is_local_address

log = logging.getLogger("sentistream.fusion_server")


# --------------------------------------------------------------------------- server
@dataclass
class _Request:
    identity: bytes
    msg: Message
    inputs: Any
    windows: int
    arrived_ns: int
    expires_ns: int  # the client stops waiting then: running it after that is wasted work


@dataclass
class ServerStats:
    requests: int = 0
    windows: int = 0
    batches: int = 0
    errors: int = 0
    malformed: int = 0
    overloaded: int = 0
    expired: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    queue_us: deque = field(default_factory=lambda: deque(maxlen=10_000))
    infer_ms: deque = field(default_factory=lambda: deque(maxlen=10_000))

    def snapshot(self) -> dict[str, Any]:
        q = np.asarray(self.queue_us, dtype=float)
        inf = np.asarray(self.infer_ms, dtype=float)
        return {
            "requests": self.requests,
            "windows": self.windows,
            "batches": self.batches,
            "errors": self.errors,
            "malformed": self.malformed,
            "overloaded": self.overloaded,
            "expired": self.expired,
            "mean_batch": round(self.windows / self.batches, 2) if self.batches else 0.0,
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "queue_us_p50": round(float(np.percentile(q, 50)), 1) if q.size else 0.0,
            "queue_us_p99": round(float(np.percentile(q, 99)), 1) if q.size else 0.0,
            "infer_ms_p50": round(float(np.percentile(inf, 50)), 3) if inf.size else 0.0,
        }


class FusionServer:
    """Dynamic batcher on one backend. ``serve_forever()`` in the main thread, or ``start()`` one."""

    def __init__(
        self,
        backend,
        model_info: dict[str, Any],
        address: str = DEFAULT_ADDRESS,
        max_batch: int = 64,
        max_queue_delay_us: int = 2000,
        max_queue_per_session: int = 64,
        allow_remote: bool = False,
        plan=None,
        context: zmq.Context | None = None,
    ):
        if not allow_remote and not is_local_address(address):
            raise ValueError(
                f"refusing to bind {address}: requests are not authenticated; bind a "
                "loopback address (tcp://127.0.0.1:PORT) or pass --allow-remote"
            )
        self.backend = backend
        self.info = dict(model_info)
        self.dims = tuple(int(d) for d in self.info["dims"])
        self.max_batch = int(max_batch)
        self.delay_ns = int(max_queue_delay_us) * 1000
        self.max_queue_per_session = int(max_queue_per_session)
        self.plan = plan
        self.ctx = context or zmq.Context.instance()
        self.sock, self.address = bind_router(self.ctx, address)
        self.queues: dict[bytes, deque[_Request]] = {}
        self._rr: deque[bytes] = deque()  # sessions with queued requests, in round-robin order
        self.pending_windows = 0
        self.stats = ServerStats()
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_log = time.monotonic()
        self.log_interval_s = 30.0

    # ---- receiving -------------------------------------------------------
    def _reply(self, identity: bytes, msg: Message) -> None:
        try:
            self.sock.send_multipart([identity, *encode(msg)], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass  # that session is not reading: its loss, nobody else's
        except zmq.ZMQError as exc:
            log.debug("reply to a gone session dropped: %s", exc)

    def _error(self, identity: bytes, seq: int, error: str, t_capture_ns: int = 0) -> None:
        self.stats.errors += 1
        self._reply(identity, Message("fusion_reply", TOPIC, seq, max(0, t_capture_ns), 0.0, meta={"error": error}))

    def _receive(self) -> int:
        n = 0
        while True:
            try:
                frames = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return n
            n += 1
            arrived = now_ns()
            identity = bytes(frames[0].buffer)
            try:
                msg = decode(frames[1:])
                if msg.kind != "fusion_request":
                    raise MessageError(f"expected a fusion_request, got {msg.kind!r}")
            except MessageError as exc:
                self.stats.malformed += 1
                log.warning("malformed fusion request dropped: %s", exc)
                self._error(identity, 0, f"malformed request: {exc}")
                continue
            op = msg.meta.get("op", "infer")
            if op == "info":
                meta = {
                    **self.info,
                    "max_batch": self.max_batch,
                    "max_queue_delay_us": self.delay_ns // 1000,
                    "pending": self.pending_windows,
                    "stats": self.stats.snapshot(),
                }
                self._reply(
                    identity, Message("fusion_reply", TOPIC, msg.seq, msg.t_capture_ns, msg.t_media_s, meta=meta)
                )
                continue
            if op != "infer":
                self._error(identity, msg.seq, f"unknown op {op!r}", msg.t_capture_ns)
                continue
            try:
                inputs = arrays_to_inputs(msg.arrays, self.dims, self.max_batch)
            except ValueError as exc:
                self.stats.malformed += 1
                self._error(identity, msg.seq, f"bad request: {exc}", msg.t_capture_ns)
                continue
            queue = self.queues.setdefault(identity, deque())
            if len(queue) >= self.max_queue_per_session:
                self.stats.overloaded += 1
                self._error(
                    identity,
                    msg.seq,
                    f"overloaded: {len(queue)} requests already queued for this session",
                    msg.t_capture_ns,
                )
                continue
            if not queue:
                self._rr.append(identity)
            timeout_ms = msg.meta.get("timeout_ms")
            ok = isinstance(timeout_ms, (int, float)) and not isinstance(timeout_ms, bool) and timeout_ms > 0
            expires = arrived + int(timeout_ms * 1e6) if ok else arrived + (1 << 62)
            queue.append(_Request(identity, msg, inputs, inputs.batch_size, arrived, expires))
            self.pending_windows += inputs.batch_size
            self.stats.requests += 1

    # ---- batching --------------------------------------------------------
    def _oldest_ns(self) -> int | None:
        heads = [q[0].arrived_ns for q in self.queues.values() if q]
        return min(heads) if heads else None

    def _take_batch(self) -> list[_Request]:
        """Round-robin over sessions, one request per session per turn, up to max_batch windows."""
        batch: list[_Request] = []
        windows = 0
        while self._rr and windows < self.max_batch:
            identity = self._rr.popleft()
            queue = self.queues[identity]
            req = queue[0]
            if windows and windows + req.windows > self.max_batch:
                self._rr.appendleft(identity)
                break
            queue.popleft()
            if req.expires_ns <= now_ns():
                self.stats.expired += 1
                self.pending_windows -= req.windows
                self._error(identity, req.msg.seq, "expired: waited longer than its timeout_ms", req.msg.t_capture_ns)
            else:
                batch.append(req)
                windows += req.windows
            if queue:
                self._rr.append(identity)
            else:
                del self.queues[identity]
        self.pending_windows -= windows
        return batch

    def _run_batch(self, batch: list[_Request]) -> None:
        from .backends import collate

        t0 = now_ns()
        try:
            inputs = collate([r.inputs for r in batch], self.plan)
            out = self.backend(inputs)
            score = out.score.detach().float().cpu().numpy().astype(np.float32).reshape(-1)
            contrib = out.contributions.detach().float().cpu().numpy().astype(np.float32).reshape(-1, 3)
        except Exception as exc:  # one failing batch must not end the server
            log.exception("fusion batch of %d request(s) failed", len(batch))
            for r in batch:
                self._error(r.identity, r.msg.seq, f"inference failed: {exc!r}", r.msg.t_capture_ns)
            return
        t1 = now_ns()
        n = int(score.shape[0])
        st = self.stats
        st.batches += 1
        st.windows += n
        st.batch_sizes[n] = st.batch_sizes.get(n, 0) + 1
        st.infer_ms.append((t1 - t0) / 1e6)
        i = 0
        for r in batch:
            st.queue_us.append((t0 - r.arrived_ns) / 1e3)
            meta = {"batch": n, "queue_us": round((t0 - r.arrived_ns) / 1e3, 1), "infer_ms": round((t1 - t0) / 1e6, 3)}
            self._reply(
                r.identity,
                Message(
                    "fusion_reply",
                    TOPIC,
                    r.msg.seq,
                    r.msg.t_capture_ns,
                    r.msg.t_media_s,
                    [score[i : i + r.windows].copy(), contrib[i : i + r.windows].copy()],
                    meta=meta,
                ),
            )
            i += r.windows

    def step(self, timeout_ms: int = 100) -> int:
        """One turn: wait for requests (at most until the oldest one's deadline), run due batches.
        Returns the number of windows run."""
        oldest = self._oldest_ns()
        if oldest is not None:
            wait_ms = max(0.0, (oldest + self.delay_ns - now_ns()) / 1e6)
            timeout = min(timeout_ms, wait_ms)
        else:
            timeout = timeout_ms
        if self.pending_windows < self.max_batch and self.sock.poll(int(-(-timeout // 1))):
            self._receive()
        self._receive()
        ran = 0
        while self.pending_windows:
            oldest = self._oldest_ns()
            due = oldest is not None and now_ns() >= oldest + self.delay_ns
            if self.pending_windows < self.max_batch and not due:
                break
            batch = self._take_batch()
            if not batch:
                break
            self._run_batch(batch)
            ran += sum(r.windows for r in batch)
            self._receive()  # requests that came in while the batch ran
        if time.monotonic() - self._last_log > self.log_interval_s:
            self._last_log = time.monotonic()
            log.info("fusion server: %s", self.stats.snapshot())
        return ran

    def serve_forever(self) -> None:
        log.info(
            "fusion server on %s: %s via %s, max batch %d, max queue delay %d us",
            self.address,
            self.info.get("model"),
            self.info.get("backend"),
            self.max_batch,
            self.delay_ns // 1000,
        )
        while not self.stopping.is_set():
            self.step(100)

    def start(self) -> FusionServer:
        """Serve in a daemon thread (tests, benches). Socket use moves to that thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="fusion-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sock.close(linger=0)


def build_server(
    config,
    address: str = DEFAULT_ADDRESS,
    max_batch: int | None = None,
    max_queue_delay_us: int = 2000,
    max_queue_per_session: int = 64,
    allow_remote: bool = False,
    threads: int = 0,
    model=None,
) -> FusionServer:
    """Load the model ``config.fusion`` names (as the live stage would), pick its backend, serve it."""
    import torch

    from .backends import BackendOptions, model_fingerprint, select_backend

    fcfg = config.fusion
    if threads > 0:
        torch.set_num_threads(threads)
    if model is None:
        model, name, checkpoint, placeholder = load_fusion_model(config)
    else:
        name, checkpoint, placeholder = getattr(model, "name", "model"), "", True
    opts = BackendOptions.from_config(fcfg)
    if max_batch:
        opts.max_batch = int(max_batch)
    if threads > 0:
        opts.threads = threads
    backend = select_backend(opts, model)
    info = {
        "model": name,
        "checkpoint": checkpoint,
        "placeholder": placeholder,
        "fingerprint": model_fingerprint(model),
        "dims": list(model.dims),
        "backend": backend.name,
        "reason": backend.reason,
    }
    return FusionServer(
        backend,
        info,
        address,
        opts.max_batch,
        max_queue_delay_us,
        max_queue_per_session,
        allow_remote,
        plan=opts.plan(),
    )


def load_fusion_model(config):
    """The fusion model the live stage would use for ``config`` (same dims, checkpoint, seed)."""
    from ..models.live import LiveModel
    from ..perception.audio_features import feature_dim
    from ..perception.face import FACE_FEATURE_DIM

    class _Dims:  # the text encoder's width without loading it: MiniLM = 384 unless configured
        dim = _text_dim(config)
        encodes_text = False  # so the checkpoint's fine-tuned text layers are not needed here

        def encode(self, text):  # pragma: no cover - never called by the server
            raise RuntimeError("the fusion server does not encode text")

    live = LiveModel(config.fusion, _Dims(), FACE_FEATURE_DIM, feature_dim(config.audio_features))
    return live.model, live.name, live.checkpoint, live.placeholder


def _text_dim(config) -> int:
    import json
    from pathlib import Path

    from ..perception.text import default_model_dir

    model_dir = config.text.model_dir or default_model_dir()
    try:
        return int(json.loads((Path(model_dir) / "config.json").read_text())["hidden_size"])
    except (OSError, KeyError, ValueError):
        return 384
