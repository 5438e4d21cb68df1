"""Request / reply plumbing shared by the model servers (fusion_server, asr_server): a ROUTER bound
to a loopback address, a send that gives up at a deadline, and the serve-until-signalled loop."""

from __future__ import annotations

import time
from typing import Any

import zmq

from . import messages
from .messages import Message, encode


def bind_router(ctx: zmq.Context, address: str, hwm: int = 10_000) -> tuple[zmq.Socket, str]:
    """A server's ROUTER socket bound to ``address`` (``tcp://HOST:0`` = a free port), frames capped
    at the engine's size limit; returns (socket, the bound address)."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.SNDHWM, hwm)
    max_frame = getattr(messages, "MAX_FRAME_BYTES", 0)
    if max_frame:
        sock.setsockopt(zmq.MAXMSGSIZE, int(max_frame))
    if address.endswith(":0") and address.startswith("tcp://"):
        port = sock.bind_to_random_port(address.rsplit(":", 1)[0])
        return sock, f"{address.rsplit(':', 1)[0]}:{port}"
    sock.bind(address)
    return sock, address


def send_before(sock: zmq.Socket, msg: Message, deadline: float) -> bool:
    """Send ``msg`` on a client socket (IMMEDIATE: nothing queues while no server is connected),
    retrying until ``deadline`` (time.monotonic); False if it could not be sent by then."""
    while True:
        try:
            sock.send_multipart(encode(msg), flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)


def serve_until_stopped(server: Any, banner: str, name: str) -> int:
    """Print ``banner``, serve until SIGTERM / Ctrl-C, print the statistics, close."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: server.stopping.set())
    print(banner, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        print(f"{name} stopped: {server.stats.snapshot()}", flush=True)
        server.close()
    return 0
