"""The supervisor: starts each stage as its own process, wires the sockets,
restarts a stage that dies (with back-off), and stops everything cleanly.

Control plane (JSON, never pickle):
    stages  --PUSH-->  supervisor PULL   ready / waiting / started / flowing / stats / done /
                                         fatal / device_lost
    supervisor PUB --> stages SUB        start {t0_ns} / stop   (topic "all" or a stage name)

Every restart is timed and recorded (`RunResult.restart_log`, one log line each):
when the death was seen, how long until the new process was spawned (the back-off,
0.2 s for a first failure), until it was ready, and until its output resumed.
Counters survive restarts: the result adds up every run of a stage.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from ..pipelines.definition import Pipeline, StageDef
from .config import EngineConfig
from .messages import MAX_FRAME_BYTES, MessageError, decode, now_ns
from .security import SocketSecurity
from .stage import EXIT_FATAL, StageParams, StageSpec

log = logging.getLogger("sentistream.supervisor")

STAGE_LOG = "stages.log"
#: Native libraries' own log levels, set for the stages when their output goes to the stage log:
#: glog (mediapipe) and TensorFlow Lite print INFO / WARNING lines straight to file descriptor 2.
QUIET_NATIVE_ENV = {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2", "GLOG_logtostderr": "1"}


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class StageProcess:
    definition: StageDef
    spec: StageSpec
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    consecutive_failures: int = 0
    restart_due: float | None = None
    ready: bool = False
    started: bool = False  # sources: began producing
    done: bool = False
    last_stats: dict[str, Any] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    carried: dict[str, Any] = field(default_factory=dict)  # counters of earlier runs of this stage
    resume: dict[str, Any] = field(default_factory=dict)  # what the last run reported: t_media_s, last_seq
    died_at: float | None = None  # monotonic time its death was seen
    pending_restart: dict[str, Any] | None = None  # the restart record being timed


@dataclass
class RunResult:
    exit_code: int
    events: int
    restarts: dict[str, int]
    stats: dict[str, dict[str, Any]]
    error: str = ""
    # one record per restart: stage, exit_code, uptime_s, failures_in_row, backoff_s, died_at_s
    # (session time), respawn_s / ready_s / flowing_s (seconds after the death was seen)
    restart_log: list[dict[str, Any]] = field(default_factory=list)
    device_events: list[dict[str, Any]] = field(default_factory=list)  # cameras / microphones lost
    stage_log: str = ""  # the stages' own output (native libraries included); "" = on the terminal


class Supervisor:
    def __init__(
        self,
        pipeline: Pipeline,
        config: EngineConfig,
        stage_params: dict[str, dict[str, Any]] | None = None,
        run_dir: str | None = None,
        stage_output: str = "log",
    ) -> None:
        """``stage_output``: "log" puts every stage's stdout / stderr in ``run_dir/stages.log``
        (kept after the run) and forwards only their WARNING / ERROR records to this process's
        logging; "terminal" leaves the stages' output on the terminal, native libraries included."""
        if stage_output not in ("log", "terminal"):
            raise ValueError(f"stage_output must be 'log' or 'terminal', not {stage_output!r}")
        self.pipeline = pipeline
        self.config = config
        self.stage_params = stage_params or {}
        self._own_run_dir = run_dir is None
        self.run_dir = run_dir or tempfile.mkdtemp(prefix="sentistream-")  # private: mode 0700
        self.stage_log = os.path.join(self.run_dir, STAGE_LOG) if stage_output == "log" else ""
        self.ctx = zmq.Context.instance()
        self.stopping = False
        self.error = ""
        self.events_seen = 0
        self._stop_reason = ""
        self.restart_log: list[dict[str, Any]] = []
        self.device_events: list[dict[str, Any]] = []
        self.stages: dict[str, StageProcess] = {}
        self.events_address = self._events_address()
        self._build_specs()

    # ---- wiring ------------------------------------------------------------
    def _address(self, name: str) -> str:
        t = self.config.transport
        if t.transport == "ipc":
            return f"ipc://{os.path.join(self.run_dir, name + '.sock')}"
        return f"tcp://{t.bind_host}:{free_tcp_port(t.bind_host)}"

    def _events_address(self) -> str:
        addr = self.config.transport.events_address
        if addr == "auto":
            return f"tcp://127.0.0.1:{free_tcp_port('127.0.0.1')}"
        return addr

    def _build_specs(self) -> None:
        self.control_address = self._address("control")
        self.command_address = self._address("command")
        outputs = {s.name: (self._address(s.name) if s.outputs else "") for s in self.pipeline.stages}
        producers = self.pipeline.producers()
        cfg = self.config.to_dict()
        for s in self.pipeline.stages:
            params = {**s.params, **self.stage_params.get(s.name, {}), "outputs": list(s.outputs)}
            if s.kind == "fusion":
                params["events_address"] = self.events_address
                params["expected_inputs"] = list(s.inputs)
            spec = StageSpec(
                name=s.name,
                kind=s.kind,
                inputs={stream: outputs[producers[stream]] for stream in s.inputs},
                output_address=outputs[s.name],
                control_address=self.control_address,
                command_address=self.command_address,
                config=cfg,
                params=StageParams.from_dict(params),
                is_source=s.is_source,
            )
            self.stages[s.name] = StageProcess(s, spec)

    # ---- processes ---------------------------------------------------------
    def _spawn(self, sp: StageProcess) -> None:
        env = dict(os.environ)
        env["SENTISTREAM_PARENT_PID"] = str(os.getpid())
        env.setdefault("HF_HUB_OFFLINE", "1")
        out = None
        if self.stage_log:
            env.update(QUIET_NATIVE_ENV)
            env["SENTISTREAM_FORWARD_LOGS"] = "1"  # WARNING / ERROR records come back on the control channel
            out = open(self.stage_log, "ab")  # noqa: SIM115 - the child holds it; ours closes below
        try:
            # argv names only the stage: the spec (the whole config) goes through a pipe, so
            # `ps` shows short command lines and no local user reads the configuration there.
            sp.proc = subprocess.Popen(
                [sys.executable, "-m", "sentistream.engine.worker", sp.spec.name],
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                # Own session: a terminal's Ctrl-C reaches only the supervisor, which
                # then stops the stages in order instead of racing their restarts.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            if out is not None:
                out.close()
        assert sp.proc.stdin is not None
        try:
            sp.proc.stdin.write(sp.spec.to_json().encode() + b"\n")
            sp.proc.stdin.close()
        except BrokenPipeError:  # it died at once; _check_processes restarts it
            pass
        sp.proc.stdin = None
        sp.pids.append(sp.proc.pid)
        sp.started_at = time.monotonic()
        sp.ready = sp.started = False
        log.info("started stage %s (pid %d)", sp.spec.name, sp.proc.pid)
        if sp.pending_restart is not None and sp.died_at is not None:
            sp.pending_restart["respawn_s"] = round(sp.started_at - sp.died_at, 3)
            sp.pending_restart["pid"] = sp.proc.pid

    def _restart_later(self, sp: StageProcess, code: int) -> None:
        cfg = self.config.supervisor
        uptime = time.monotonic() - sp.started_at
        if uptime >= cfg.stable_after_s:
            sp.consecutive_failures = 0
        delay = min(cfg.restart_backoff_max_s, cfg.restart_backoff_s * (2**sp.consecutive_failures))
        sp.consecutive_failures += 1
        sp.restart_due = time.monotonic() + delay
        level = logging.WARNING if sp.consecutive_failures < 3 else logging.ERROR
        log.log(
            level,
            "stage %s exited with code %s after %.1f s; restarting in %.2f s (failure %d in a row%s)%s",
            sp.spec.name,
            code,
            uptime,
            delay,
            sp.consecutive_failures,
            "; it keeps crashing: backing off" if sp.consecutive_failures >= 3 else "",
            f"; its output is in {self.stage_log}" if self.stage_log else "",
        )
        record = {
            "stage": sp.spec.name,
            "exit_code": code,
            "uptime_s": round(uptime, 3),
            "failures_in_row": sp.consecutive_failures,
            "backoff_s": round(delay, 3),
            "died_at_s": round((now_ns() - self.t0_ns) / 1e9, 3) if self.t0_ns else None,
        }
        self.restart_log.append(record)
        sp.pending_restart = record

    def _check_processes(self) -> None:
        now = time.monotonic()
        for sp in self.stages.values():
            if sp.proc is None:
                if sp.restart_due is not None and now >= sp.restart_due and not self.stopping:
                    sp.restart_due = None
                    sp.restarts += 1
                    if sp.spec.is_source and self.t0_ns is not None:
                        # A restarted source rejoins the session clock where it left off.
                        sp.spec.params.t0_ns = self.t0_ns
                        sp.spec.params.resume_from_s = float(sp.resume.get("t_media_s", 0.0))
                    elif not sp.spec.is_source:
                        # What it missed while down is counted as dropped (see Stage._last_seq).
                        sp.spec.params.resume_seq = dict(sp.resume.get("last_seq") or {})
                    self._spawn(sp)
                continue
            code = sp.proc.poll()
            if code is None:
                continue
            sp.proc = None
            sp.died_at = now
            self._fold_counters(sp)
            if self.stopping:
                continue
            if code == EXIT_FATAL:
                self.error = self.error or f"stage {sp.spec.name} failed and cannot be restarted"
                self.stop("fatal")
            elif code == 0 and (sp.done or sp.definition.kind == "sink"):
                sp.done = True
            else:
                self._restart_later(sp, code)

    # ---- control plane -----------------------------------------------------
    def _handle_control(self, body: dict[str, Any]) -> None:
        sp = self.stages.get(str(body.get("stage")))
        if sp is None:
            return
        kind = body.get("type")
        if kind == "ready":
            sp.ready = True
            if sp.pending_restart is not None and sp.died_at is not None:
                sp.pending_restart["ready_s"] = round(time.monotonic() - sp.died_at, 3)
        elif kind == "started":
            sp.started = True
        elif kind == "flowing":
            rec = sp.pending_restart
            if rec is not None and sp.died_at is not None:
                rec["flowing_s"] = round(time.monotonic() - sp.died_at, 3)
                sp.pending_restart = None
                log.warning(
                    "stage %s is back: respawned %.2f s after it died, ready after %.2f s, output resumed after %.2f s",
                    sp.spec.name,
                    rec.get("respawn_s", -1),
                    rec.get("ready_s", -1),
                    rec["flowing_s"],
                )
        elif kind == "device_lost":
            event = {
                "stage": sp.spec.name,
                "stream": str(body.get("stream")),
                "device": str(body.get("device")),
                "error": str(body.get("error")),
                "t_media_s": body.get("t_media_s"),
            }
            self.device_events.append(event)
            log.error(
                "%s lost: %s (stage %s, stream %s, at %.2f s); the session goes on, that modality is masked",
                event["device"],
                event["error"],
                event["stage"],
                event["stream"],
                float(event["t_media_s"] or 0.0),
            )
        elif kind == "stats":
            prev = sp.last_stats.get("counters", {})
            sp.last_stats = body
            for stream, n in body.get("counters", {}).get("dropped", {}).items():
                if n > prev.get("dropped", {}).get(stream, 0):
                    log.warning("stage %s: %d message(s) dropped on %s so far", sp.spec.name, n, stream)
        elif kind == "done":
            sp.done = True
            if sp.definition.kind == "sink":
                self.stop("complete")
        elif kind == "fatal":
            self.error = str(body.get("error", "fatal error"))
            self.stop("fatal")
        elif kind == "log":  # a stage's WARNING / ERROR record (its full output is in the stage log)
            level = body.get("level")
            logging.getLogger(str(body.get("logger") or "sentistream")).log(
                level if isinstance(level, int) else logging.WARNING,
                "[%s] %s",
                sp.spec.name,
                str(body.get("message", "")),
            )

    def _send_command(self, topic: str, body: dict[str, Any]) -> None:
        self.command.send_multipart([topic.encode(), json.dumps(body).encode()])

    def stop(self, reason: str = "requested") -> None:
        if not self.stopping:
            self.stopping = True
            self._stop_reason = reason
            log.info("stopping: %s", reason)

    # ---- main --------------------------------------------------------------
    def run(
        self,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        on_status: Callable[[dict[str, StageProcess]], None] | None = None,
    ) -> RunResult:
        self.t0_ns: int | None = None
        # CURVE on every socket when the transport asks for it (engine/security.py).
        self.security = SocketSecurity(self.config.transport, self.ctx)
        self.control = self.security.server(self.ctx.socket(zmq.PULL))
        self.control.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
        self.control.bind(self.control_address)
        self.command = self.security.server(self.ctx.socket(zmq.PUB))
        self.command.bind(self.command_address)
        self.events = self.security.client(self.ctx.socket(zmq.SUB))
        self.events.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self.events.setsockopt(zmq.SUBSCRIBE, b"events")
        self.events.connect(self.events_address)
        previous = {sig: signal.signal(sig, lambda *_: self.stop("signal")) for sig in (signal.SIGINT, signal.SIGTERM)}
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.events, zmq.POLLIN)
        try:
            for sp in self.stages.values():
                self._spawn(sp)
            ready_deadline = time.monotonic() + self.config.supervisor.ready_timeout_s
            source_done_at: float | None = None
            last_start_sent = 0.0
            while not self.stopping:
                for sock, _ in poller.poll(50):
                    if sock is self.control:
                        self._drain_control()
                    else:
                        self._drain_events(on_event)
                self._check_processes()
                now = time.monotonic()
                if self.t0_ns is None:
                    if all(sp.ready for sp in self.stages.values()):
                        self.t0_ns = now_ns()
                        log.info("all stages ready; session starts")
                    elif now > ready_deadline:
                        missing = [n for n, sp in self.stages.items() if not sp.ready]
                        self.error = f"stages not ready after {self.config.supervisor.ready_timeout_s:.0f} s: {missing}"
                        crashing = [
                            f"{n} ({sp.consecutive_failures} crashes in a row)"
                            for n, sp in self.stages.items()
                            if not sp.ready and sp.consecutive_failures
                        ]
                        if crashing:
                            self.error += f"; crashing: {', '.join(crashing)}"
                        self.stop("timeout")
                # Resend "start" until every source confirms (PUB is fire-and-forget).
                if self.t0_ns is not None and now - last_start_sent > 0.2:
                    for sp in self.stages.values():
                        if sp.spec.is_source and not sp.started and sp.proc is not None:
                            self._send_command(sp.spec.name, {"type": "start", "t0_ns": self.t0_ns})
                    last_start_sent = now
                sources = [sp for sp in self.stages.values() if sp.spec.is_source]
                if source_done_at is None and sources and all(sp.done for sp in sources):
                    source_done_at = now
                if source_done_at is not None and now - source_done_at > self.config.supervisor.drain_timeout_s:
                    self.error = "the sources ended but the last event never arrived"
                    self.stop("drain timeout")
                if on_status is not None:
                    on_status(self.stages)
            # Deliver what is still queued before tearing down.
            self._drain_events(on_event)
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        code = 0 if self._stop_reason in ("complete", "signal", "requested") and not self.error else 1
        for rec in self.restart_log:
            log.warning(
                "restart of %s (exit code %s, died at %s s): respawned after %s s, ready after %s s, "
                "output resumed after %s s",
                rec["stage"],
                rec["exit_code"],
                rec.get("died_at_s"),
                rec.get("respawn_s", "-"),
                rec.get("ready_s", "-"),
                rec.get("flowing_s", "-"),
            )
        return RunResult(
            exit_code=code,
            events=self.events_seen,
            restarts={n: sp.restarts for n, sp in self.stages.items()},
            stats={n: _add_counters(sp.carried, sp.last_stats.get("counters", {})) for n, sp in self.stages.items()},
            error=self.error,
            restart_log=[dict(r) for r in self.restart_log],
            device_events=list(self.device_events),
            stage_log=self.stage_log if self.stage_log and _non_empty(self.stage_log) else "",
        )

    def _fold_counters(self, sp: StageProcess) -> None:
        """A stage process ended: keep its counters and what a restart resumes from."""
        counters = sp.last_stats.get("counters", {})
        sp.carried = _add_counters(sp.carried, counters)
        sp.resume = {
            "t_media_s": sp.last_stats.get("t_media_s", sp.resume.get("t_media_s", 0.0)),
            "last_seq": counters.get("last_seq", {}),
        }
        sp.last_stats = {}

    def _drain_control(self) -> None:
        while True:
            try:
                raw = self.control.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                body = json.loads(raw)
            except ValueError:
                log.warning("malformed control message dropped")
                continue
            if isinstance(body, dict):
                self._handle_control(body)

    def _drain_events(self, on_event: Callable[[dict[str, Any]], None] | None) -> None:
        while True:
            try:
                frames = self.events.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = decode(frames)
            except MessageError as exc:
                log.warning("malformed event dropped: %s", exc)
                continue
            if msg.kind != "event":
                continue
            self.events_seen += 1
            if on_event is not None:
                on_event(msg.meta)

    def _shutdown(self) -> None:
        try:
            self._send_command("all", {"type": "stop"})
        except zmq.ZMQError:
            pass
        procs = [(sp, sp.proc) for sp in self.stages.values() if sp.proc is not None]
        for _, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        start = time.monotonic()
        deadline = start + self.config.supervisor.stop_timeout_s
        for sp, p in procs:
            # A stage still in setup (loading models) has nothing to flush: 1 s, not stop_timeout_s.
            until = deadline if sp.ready else min(deadline, start + 1.0)
            try:
                p.wait(timeout=max(0.1, until - time.monotonic()))
            except subprocess.TimeoutExpired:
                if sp.ready:
                    log.warning("stage pid %d did not stop in time; killing it", p.pid)
                p.kill()
                p.wait()
        self._drain_control()  # the stages' final counters, sent as they stopped
        for sock in (self.control, self.command, self.events):
            sock.close(linger=0)
        self.security.close()
        if self._own_run_dir:
            self._clean_run_dir()

    def _clean_run_dir(self) -> None:
        """Remove what the run made (sockets, keys); keep the stage log when it holds anything."""
        keep = self.stage_log if self.stage_log and _non_empty(self.stage_log) else ""
        for name in os.listdir(self.run_dir):
            path = os.path.join(self.run_dir, name)
            if path == keep:
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        if not keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def all_pids(self) -> list[int]:
        return [pid for sp in self.stages.values() for pid in sp.pids]


def _non_empty(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def _add_counters(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Stage counters of two runs of one stage, added up (`last_seq` is not a count)."""
    out: dict[str, Any] = {}
    for key in set(a) | set(b):
        if key == "last_seq":
            continue
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) or isinstance(y, dict):
            d = dict(x or {})
            for k, v in (y or {}).items():
                d[k] = d.get(k, 0) + v
            out[key] = d
        elif isinstance(x or 0, (int, float)) and isinstance(y or 0, (int, float)):
            out[key] = (x or 0) + (y or 0)
        else:  # not a count: the newest value
            out[key] = y if y is not None else x
    return out


def _die_with_parent() -> None:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
