"""The fusion server's client: :class:`RemoteFusion` sends windows to ``sentistream serve`` and
stands in for a local backend (engine/backends.py) in a live model."""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any

import numpy as np
import zmq

from .fusion_wire import TOPIC, RemoteFusionError, inputs_to_arrays
from .messages import Message, MessageError, decode, now_ns
from .rpc import send_before

log = logging.getLogger("sentistream.fusion_client")


# --------------------------------------------------------------------------- client
class RemoteFusion:
    """A :class:`~sentistream.engine.backends.FusionBackend` that asks a fusion server.

    Synchronous use (a fusion stage): ``out = remote(inputs)``. Asynchronous use (load generators,
    many windows in flight): ``rid = remote.submit(inputs)`` then ``remote.collect(timeout_ms)``.
    """

    name = "remote"

    _ids = itertools.count(1)

    def __init__(self, address: str, timeout_s: float = 2.0, context: zmq.Context | None = None):
        self.address = address
        self.timeout_s = float(timeout_s)
        self.reason = f"fusion server {address}"
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for a server that is not there
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        self.sock.setsockopt(zmq.RCVHWM, 1000)
        self.sock.connect(address)
        self._seq = int(os.getpid() % 1000) * 1_000_000
        self._info: dict | None = None
        self.last_meta: dict[str, Any] = {}

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _send(self, msg: Message, timeout_s: float) -> None:
        if not send_before(self.sock, msg, time.monotonic() + timeout_s):
            raise RemoteFusionError(f"fusion server {self.address} is not reachable")

    def _recv(self, timeout_s: float) -> Message | None:
        if not self.sock.poll(max(0, int(timeout_s * 1000))):
            return None
        frames = self.sock.recv_multipart(copy=False)
        try:
            return decode(frames)
        except MessageError as exc:
            log.warning("malformed fusion reply dropped: %s", exc)
            return None

    def info(self, timeout_s: float | None = None, refresh: bool = False) -> dict[str, Any]:
        """The served model's identity and the batcher's statistics."""
        if self._info is not None and not refresh:
            return self._info
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        seq = self._next()
        self._send(Message("fusion_request", TOPIC, seq, now_ns(), 0.0, meta={"op": "info"}), timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            reply = self._recv(deadline - time.monotonic())
            if reply is not None and reply.seq == seq:
                if "error" in reply.meta:
                    raise RemoteFusionError(str(reply.meta["error"]))
                self._info = dict(reply.meta)
                return self._info
        raise RemoteFusionError(f"fusion server {self.address} did not answer within {timeout_s:g} s")

    def submit(self, inputs, t_media_s: float = 0.0) -> int:
        seq = self._next()
        msg = Message(
            "fusion_request",
            TOPIC,
            seq,
            now_ns(),
            float(t_media_s),
            inputs_to_arrays(inputs),
            meta={"op": "infer", "timeout_ms": round(self.timeout_s * 1e3, 3)},
        )
        self._send(msg, self.timeout_s)
        return seq

    def collect(self, timeout_s: float = 0.0) -> list[tuple[int, Any, dict]]:
        """Replies that have arrived: (request id, FusionOutput or RemoteFusionError, meta)."""
        out = []
        reply = self._recv(timeout_s)
        while reply is not None:
            out.append((reply.seq, self._output(reply), reply.meta))
            reply = self._recv(0)
        return out

    @staticmethod
    def _output(reply: Message):
        import torch

        from ..models.base import FusionOutput

        if "error" in reply.meta or len(reply.arrays) != 2:
            return RemoteFusionError(str(reply.meta.get("error", "reply without results")))
        score, contrib = (torch.from_numpy(np.array(a, copy=True)) for a in reply.arrays)
        return FusionOutput(score, contrib, {})

    def __call__(self, inputs):
        seq = self.submit(inputs)
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RemoteFusionError(f"fusion server {self.address} did not answer within {self.timeout_s:g} s")
            reply = self._recv(left)
            if reply is None or reply.seq != seq:
                continue  # a late reply to an earlier request that timed out
            result = self._output(reply)
            if isinstance(result, Exception):
                raise result
            self.last_meta = reply.meta
            return result

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "reason": self.reason}

    def close(self) -> None:
        self.sock.close(linger=0)
