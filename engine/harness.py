"""Test harnesses for one stage, without a supervisor or the rest of the graph.

* :func:`run_stage` runs a processor stage's logic in this process (as pipecat's
  ``run_test(processor, frames_to_send, expected_down_frames)``): messages go straight to its
  hooks, what it publishes is collected and returned; no sockets, no worker process.
* :class:`IsolatedStage` runs one stage in its own worker process, driven over real ZeroMQ
  sockets (the stage's own runtime, decoder and counters included).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from .config import EngineConfig
from .messages import Message, decode
from .stage import Stage, StageSpec


@dataclass
class StageRun:
    """What a stage did with the messages :func:`run_stage` gave it."""

    published: list[Message] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)  # ready / stats / fatal ... bodies
    counters: dict[str, Any] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[Message]:
        return [m for m in self.published if m.kind == kind]


class _Collect:
    """Stands in for the stage's PUB and control sockets: keeps what is sent."""

    def __init__(self, run: StageRun) -> None:
        self.run = run

    def send_multipart(self, frames: Sequence[Any], copy: bool = True, **_: Any) -> None:
        self.run.published.append(decode([bytes(f) for f in frames]))

    def send_string(self, text: str, flags: int = 0) -> None:
        self.run.reports.append(json.loads(text))

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        raise zmq.Again()  # no supervisor commands

    def close(self, linger: int | None = None) -> None:
        pass


def stage_spec(
    kind: str,
    inputs: Iterable[str] = (),
    outputs: Iterable[str] = (),
    config: EngineConfig | None = None,
    **params: Any,
) -> StageSpec:
    """A spec for one stage of ``kind`` outside a graph (addresses are filled in by the harness)."""
    return StageSpec(
        name=kind,
        kind=kind,
        inputs={s: "" for s in inputs},
        output_address="",
        control_address="",
        command_address="",
        config=(config or EngineConfig()).to_dict(),
        params={"outputs": list(outputs), **params},
    )


def run_stage(
    stage: Stage,
    inputs: Iterable[Message],
    expect: Callable[[StageRun], bool] | None = None,
    idle_timeout_s: float = 10.0,
    setup: bool = True,
) -> StageRun:
    """Feed ``inputs`` to ``stage`` in order (eos messages to ``on_eos``), then call ``on_idle``
    until ``expect(run)`` holds (or ``idle_timeout_s`` passes); return what it published.

    A handler's exception propagates (unlike the worker loop, which counts and logs it), so a
    test sees the traceback of the stage's own logic."""
    run = StageRun()
    sink = _Collect(run)
    stage.pub = sink  # type: ignore[assignment]
    stage.control = sink
    stage.commands = sink
    stage.t0_ns = stage.t0_ns or 1
    if setup:
        stage.setup()
    try:
        for msg in inputs:
            stage._track_sequence(msg)
            stage.counters.received += msg.kind != "eos"
            stage.handle(msg)
        deadline = time.monotonic() + idle_timeout_s
        while expect is not None and not expect(run) and time.monotonic() < deadline:
            stage.on_idle()
            time.sleep(0.01)
    finally:
        if setup:
            stage.teardown()
    run.counters = stage.counters.snapshot()
    return run


def _bind_free(ctx: zmq.Context, kind: int) -> tuple[zmq.Socket, str]:
    sock = ctx.socket(kind)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, f"tcp://127.0.0.1:{port}"


class IsolatedStage:
    """One stage of ``kind`` in its own worker process; the test publishes its input stream
    ``inp`` and subscribes to its output ``out`` over real sockets."""

    def __init__(
        self,
        kind: str,
        inp: str,
        out: str,
        config: EngineConfig | None = None,
        ready_timeout_s: float = 120.0,
        capture_stderr: bool = True,
        **params: Any,
    ) -> None:
        ctx = zmq.Context.instance()
        self.feed, feed_addr = _bind_free(ctx, zmq.PUB)
        self.control, control_addr = _bind_free(ctx, zmq.PULL)
        self.command, command_addr = _bind_free(ctx, zmq.PUB)
        probe, out_addr = _bind_free(ctx, zmq.PUB)
        probe.close(linger=0)
        spec = StageSpec(
            name=kind,
            kind=kind,
            inputs={inp: feed_addr},
            output_address=out_addr,
            control_address=control_addr,
            command_address=command_addr,
            config=(config or EngineConfig()).to_dict(),
            params={"outputs": [out], **params},
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sentistream.engine.worker", spec.name],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE if capture_stderr else None,
            text=True,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(spec.to_json() + "\n")  # the spec goes through a pipe, as the supervisor sends it
        self.proc.stdin.close()
        self.proc.stdin = None  # communicate() must not touch the closed pipe
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, out.encode())
        self.sub.connect(out_addr)
        self.stats: dict[str, Any] = {}
        self.err = ""
        self._closed = False
        deadline = time.monotonic() + ready_timeout_s
        ready = False
        while time.monotonic() < deadline and not ready and self.proc.poll() is None:
            if self.control.poll(500):
                ready = json.loads(self.control.recv()).get("type") == "ready"
        if not ready:
            err = self.close()
            raise RuntimeError(f"{kind} stage never became ready: {err[-2000:]}")
        time.sleep(0.3)  # subscriptions propagate (ZeroMQ's slow joiner)

    def send(self, msg: Message) -> None:
        self.feed.send_multipart(msg.encode())

    def receive(self, timeout: float, until: Callable[[list[Message]], bool] = lambda msgs: False) -> list[Message]:
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(out):
            if self.sub.poll(100):
                out.append(decode(self.sub.recv_multipart()))
        if out:
            out += self.receive(0.5)  # anything that follows at once
        return out

    def counters(self, until: Callable[[dict[str, Any]], bool] = lambda c: True, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.control.poll(300):
                body = json.loads(self.control.recv())
                if body.get("type") == "stats":
                    self.stats = body["counters"]
                    if until(self.stats):
                        break
        return self.stats

    def close(self) -> str:
        """Stop the process; its stderr (when captured)."""
        if not self._closed:
            self._closed = True
            if self.proc.poll() is None:
                self.proc.terminate()
            _, err = self.proc.communicate(timeout=20)
            self.err = err or ""
            for s in (self.feed, self.control, self.command, self.sub):
                s.close(linger=0)
        return self.err
