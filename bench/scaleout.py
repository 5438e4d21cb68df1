"""`sentistream bench scaleout`: the fusion tier in-process, on the ZeroMQ fusion server and on
Ray Serve (one node, two nodes), side by side in one run.

    sentistream bench scaleout                         # modes inprocess,zmq,ray1,ray2; 4, 16, 64 sessions
    sentistream bench scaleout --modes zmq,ray1 --step-s 4

Each mode carries synthetic live sessions (as ``bench throughput``: one window per hop of 250 ms,
phases spread evenly, live-sized inputs) for ``--step-s`` seconds per session count, 4, 16, 64 and
then doubling up to ``--max-sessions`` while the p95 stays within the budget. A window's latency
runs from when it was due to its reply; an unanswered window counts as infinite.

* ``inprocess``: each session scores its own windows with the model in its own process (here: a
  pool of one worker per core, batch 1, one thread each), as the live graph does by default.
* ``zmq``: ``sentistream serve`` (one process, one thread, dynamic batching), one
  :class:`RemoteFusion` per session, one window per request.
* ``ray1``: a loopback Ray cluster of one node (all cores) with one replica (1 CPU);
  ``ray2``: two nodes on this machine (1 CPU each), one replica on each, the head's proxy routing
  to both. Sessions share :class:`RayFusion` clients (``--sessions-per-client``) that send the
  windows queued within ``--flush-ms`` as one request (a gateway carrying several calls): Ray's
  fixed cost per request is several CPU-ms, so one window per request would dominate.

CPU: ``cpu_ms_per_window`` is the CPU time of every process of the mode (the bench process, that
is the sessions' client side or in-process model, plus the server / every Ray process of the
cluster: GCS, raylets, agents, controller, proxy, replicas) over the measured step, per answered
window. Both nodes of ``ray2`` share this machine's cores: the point is the overhead and the
routing, not a speed-up. Writes bench/results/scaleout-<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .common import RESULTS, command_line, show_bench_progress, stamp, summary, write_json
from .procs import descendants

log = logging.getLogger("sentistream.bench.scaleout")

MODES = ("inprocess", "zmq", "ray1", "ray2")
HOP_S = 0.25
CLK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- CPU accounting
def _cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


class CpuMeter:
    """CPU time of this process plus a set of other processes (re-listed at each reading)."""

    def __init__(self, list_pids) -> None:
        self.list_pids = list_pids
        self._start: dict[int, int] = {}
        self._self0 = 0.0

    def start(self) -> None:
        self._start = {p: _cpu_ticks(p) for p in self.list_pids()}
        self._self0 = time.process_time()

    def stop(self) -> dict[str, float]:
        own = (time.process_time() - self._self0) * 1e3
        others = 0
        for p in self.list_pids():
            others += _cpu_ticks(p) - self._start.get(p, 0)  # a new process counts from 0
        return {"client_ms": round(own, 1), "server_ms": round(others * 1e3 / CLK, 1)}


# --------------------------------------------------------------------------- modes
class InProcess:
    """Each session's windows scored in-process, batch 1, one worker per core."""

    name = "inprocess"

    def __init__(self, model: Any, threads: int = 1) -> None:
        import torch

        from ..engine.backends import BackendOptions, select_backend
        from ..engine.config import FusionConfig

        torch.set_num_threads(threads)
        opts = BackendOptions.from_config(FusionConfig())
        opts.threads = threads
        self.backend = select_backend(opts, model)
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        self.done: list[tuple[int, int, bool]] = []
        self.info = {"backend": self.backend.name, "reason": self.backend.reason}

    def _run(self, session: int, rid: int, window: Any) -> None:
        try:
            self.backend(window)
            self.done.append((session, rid, True))
        except Exception:
            self.done.append((session, rid, False))

    def submit(self, session: int, rid: int, window: Any) -> None:
        self.pool.submit(self._run, session, rid, window)

    def poll(self, timeout_s: float) -> list[tuple[int, int, bool]]:
        if not self.done:
            time.sleep(min(timeout_s, 0.002))
        out, self.done = self.done, []
        return out

    def server_pids(self) -> list[int]:
        return []

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class ZmqMode:
    """One RemoteFusion per session against `sentistream serve`."""

    name = "zmq"

    def __init__(self, address: str, proc: subprocess.Popen, n: int, timeout_s: float) -> None:
        import zmq

        from ..engine.fusion_client import RemoteFusion
        from .throughput import _raise_fd_limit

        _raise_fd_limit(n)
        self.proc = proc
        self.ctx = zmq.Context()
        self.ctx.set(zmq.MAX_SOCKETS, n + 64)
        self.clients = [RemoteFusion(address, timeout_s=timeout_s, context=self.ctx) for _ in range(n)]
        self.poller = zmq.Poller()
        self.index = {}
        for i, c in enumerate(self.clients):
            self.poller.register(c.sock, zmq.POLLIN)
            self.index[c.sock] = i
        self.rids: dict[tuple[int, int], int] = {}

    def submit(self, session: int, rid: int, window: Any) -> None:
        self.rids[(session, self.clients[session].submit(window))] = rid

    def poll(self, timeout_s: float) -> list[tuple[int, int, bool]]:
        out = []
        for sock, _ in self.poller.poll(timeout_s * 1e3):
            i = self.index[sock]
            for seq, res, _meta in self.clients[i].collect(0):
                rid = self.rids.pop((i, seq), None)
                if rid is not None:
                    out.append((i, rid, not isinstance(res, Exception)))
        return out

    def server_pids(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.ctx.term()


class RayMode:
    """Sessions share RayFusion clients; the windows queued within flush_ms go as one request."""

    def __init__(
        self, name: str, address: str, cluster: Any, n: int, per_client: int, flush_ms: float, timeout_s: float
    ):
        from ..engine.ray_client import RayFusion

        self.name = name
        self.cluster = cluster
        groups = max(1, math.ceil(n / per_client))
        self.clients = [RayFusion(address, timeout_s=timeout_s, workers=4) for _ in range(groups)]
        self.flush_s = flush_ms / 1e3
        self.last_flush = time.monotonic()
        self.rids: dict[tuple[int, int], tuple[int, int]] = {}
        self.windows_per_request: list[int] = []

    def submit(self, session: int, rid: int, window: Any) -> None:
        g = session % len(self.clients)
        self.rids[(g, self.clients[g].submit(window))] = (session, rid)

    def poll(self, timeout_s: float) -> list[tuple[int, int, bool]]:
        now = time.monotonic()
        if now - self.last_flush >= self.flush_s:
            for c in self.clients:
                c.flush()
            self.last_flush = now
        out = []
        for g, c in enumerate(self.clients):
            for rid_c, res, meta in c.collect(0, flush=False):
                entry = self.rids.pop((g, rid_c), None)
                if entry is not None:
                    out.append((*entry, not isinstance(res, Exception)))
                    if meta.get("windows"):
                        self.windows_per_request.append(int(meta["windows"]))
        if not out:
            time.sleep(min(timeout_s, 0.002))
        return out

    def server_pids(self) -> list[int]:
        from ..engine.ray_node import session_pids

        pids: set[int] = set()
        for node in self.cluster.nodes:
            pids |= {node.pid, *session_pids(node.pid), *descendants(node.pid)}
        return sorted(pids)

    def close(self) -> None:
        for c in self.clients:
            c.close()


# --------------------------------------------------------------------------- one step
def run_step(mode: Any, n: int, seconds: float, budget_ms: float, pool: list[Any], warmup_s: float, hop_s: float):
    import heapq

    start = time.monotonic() + 0.1
    measure_from = start + warmup_s
    end = measure_from + seconds
    heap = [(start + hop_s * i / n, i) for i in range(n)]
    heapq.heapify(heap)
    due_at: dict[int, tuple[float, bool]] = {}
    lat: list[float] = []
    errors = 0
    sent = 0
    rid = 0
    meter = CpuMeter(mode.server_pids)
    metering = False
    cpu: dict[str, float] = {}
    grace = 2 * budget_ms / 1e3
    while True:
        now = time.monotonic()
        if not metering and now >= measure_from:
            meter.start()
            metering = True
        if now >= end + grace or (now >= end and not any(m for _, m in due_at.values())):
            break
        while now < end and heap and heap[0][0] <= now:
            due, i = heapq.heappop(heap)
            rid += 1
            measured = due >= measure_from
            due_at[rid] = (due, measured)
            sent += int(measured)
            mode.submit(i, rid, pool[rid % len(pool)])
            heapq.heappush(heap, (due + hop_s, i))
        for _i, r, ok in mode.poll(0.005):
            entry = due_at.pop(r, None)
            if entry is None:
                continue
            due, measured = entry
            if not measured:
                continue
            if ok:
                lat.append((time.monotonic() - due) * 1e3)
            else:
                errors += 1
        if metering and not cpu and now >= end:
            cpu = meter.stop()
    if not cpu:
        cpu = meter.stop()
    missed = sum(1 for _, m in due_at.values() if m)
    full = np.sort(np.concatenate([np.asarray(lat, float), np.full(missed + errors, np.inf)]))

    def rank(q: float) -> float:
        return float(full[max(0, int(np.ceil(q * full.size)) - 1)]) if full.size else float("inf")

    p95 = rank(0.95)
    answered = len(lat)
    total_ms = cpu["client_ms"] + cpu["server_ms"]
    return {
        "sessions": n,
        "windows": sent,
        "answered": answered,
        "errors": errors,
        "missed": missed,
        "latency_ms": summary(lat),
        "p95_ms": round(p95, 3) if np.isfinite(p95) else None,
        "within_budget": bool(np.isfinite(p95) and p95 <= budget_ms),
        "cpu_ms": cpu,
        "cpu_ms_per_window": round(total_ms / answered, 3) if answered else None,
        "server_cpu_ms_per_window": round(cpu["server_ms"] / answered, 3) if answered else None,
        "cpu_cores_used": round(total_ms / 1e3 / seconds, 3),
        "cpu_ms_per_session_s": round(total_ms / seconds / n, 3),
    }


def cpu_pressure() -> float | None:
    """/proc/pressure/cpu "some avg60" (percent of time a runnable task waited for a CPU)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(dict(kv.split("=") for kv in line.split()[1:])["avg60"])
    except (OSError, KeyError, ValueError, IndexError):
        return None


def idle_cores(list_pids, seconds: float = 3.0) -> float:
    """Cores the server side uses with no traffic (a Ray cluster's heartbeats, agents, metrics)."""
    meter = CpuMeter(list_pids)
    meter.start()
    time.sleep(seconds)
    return round(meter.stop()["server_ms"] / 1e3 / seconds, 3)


def ladder(mode: Any, args, pool: list[Any]) -> tuple[list[dict], int]:
    """4, 16, 64 (``--sessions``), then doubling up to --max-sessions while within the budget."""
    counts = [int(x) for x in args.sessions.split(",")]
    steps: list[dict] = []
    best = 0
    n_i = 0
    while n_i < len(counts):
        n = counts[n_i]
        m = mode(n) if callable(mode) else mode
        try:
            r = run_step(m, n, args.step_s, args.budget_ms, pool, args.warmup_s, args.hop_s)
            if isinstance(m, RayMode) and m.windows_per_request:
                r["windows_per_request"] = round(float(np.mean(m.windows_per_request)), 2)
        finally:
            if callable(mode):
                m.close()
        steps.append(r)
        log.info(
            "%s %d sessions: p95 %s ms, %s CPU-ms/window, %d missed/errors",
            getattr(m, "name", "?"),
            n,
            r["p95_ms"],
            r["cpu_ms_per_window"],
            r["missed"] + r["errors"],
        )
        if r["within_budget"]:
            best = max(best, n)
            if n_i == len(counts) - 1 and n * 2 <= args.max_sessions:
                counts.append(n * 2)  # past the fixed counts: double while within the budget
        n_i += 1
    return steps, best


# --------------------------------------------------------------------------- the run
def _model():
    from ..engine.config import load_config
    from ..engine.fusion_server import load_fusion_model

    model, name, checkpoint, _ = load_fusion_model(load_config())
    return model, name, checkpoint


def _ray_mode(name: str, args, pool: list[Any]) -> dict[str, Any]:
    from ..engine.config import load_config
    from ..engine.ray_node import free_port
    from ..engine.ray_serve import deploy, start_local_cluster

    cores = os.cpu_count() or 2
    two = name == "ray2"
    t0 = time.monotonic()
    cluster = start_local_cluster(worker_nodes=1 if two else 0, node_cpus=max(1, cores // 2) if two else cores)
    replicas = 2 if two else 1
    cfg = load_config(
        None,
        {
            "ray": {
                "http_port": free_port(),
                "min_replicas": replicas,
                "initial_replicas": replicas,
                "max_replicas": replicas,
                "num_cpus": 1.0,
                "batch_wait_timeout_s": args.batch_wait_ms / 1e3,
            }
        },
    )
    try:
        address = deploy(cfg, cluster.gcs_address, cluster.token)
        started_s = time.monotonic() - t0
        log.info(
            "%s: %d node(s), %d replica(s) at %s after %.1f s", name, len(cluster.nodes), replicas, address, started_s
        )
        timeout = 2 * args.budget_ms / 1e3

        def make(n: int) -> RayMode:
            return RayMode(name, address, cluster, n, args.sessions_per_client, args.flush_ms, timeout)

        from ..engine.ray_client import RayFusion

        idle, steps, best, info = _measure_server(make, lambda: RayFusion(address, timeout_s=10), args, pool)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()
    return {
        "nodes": len(cluster.nodes),
        "replicas": replicas,
        "start_s": round(started_s, 1),
        "idle_server_cores": idle,
        "server": {k: info.get(k) for k in ("model", "backend", "reason", "stats")},
        "sessions_per_client": args.sessions_per_client,
        "flush_ms": args.flush_ms,
        "steps": steps,
        "sessions_at_p95_500ms": best,
    }


def _measure_server(make, client, args, pool: list[Any]) -> tuple[float, list[dict], int, dict]:
    """A server mode's run: warm it up, read its idle CPU, climb the session ladder, then ask a
    fresh client for the server's info -> (idle cores, steps, sessions at p95 <= budget, info)."""
    warm = make(8)
    run_step(warm, 8, args.warmup_s + 2, args.budget_ms, pool, 0.5, args.hop_s)
    idle = idle_cores(warm.server_pids)
    warm.close()
    steps, best = ladder(make, args, pool)
    probe = client()
    info = probe.info(refresh=True)
    probe.close()
    return idle, steps, best, info


def _zmq_mode(args, pool: list[Any]) -> dict[str, Any]:
    from ..engine.fusion_client import RemoteFusion
    from ..engine.supervisor import free_tcp_port
    from .throughput import start_server

    ns = argparse.Namespace(
        model="default", max_queue_delay_us=2000, max_batch=256, threads=1, backend="", device="cpu"
    )
    proc, address = start_server(ns, free_tcp_port())
    try:
        timeout = 2 * args.budget_ms / 1e3

        def make(n: int) -> ZmqMode:
            return ZmqMode(address, proc, n, timeout)

        idle, steps, best, info = _measure_server(make, lambda: RemoteFusion(address, timeout_s=10), args, pool)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "server": {k: info.get(k) for k in ("model", "backend", "reason", "stats")},
        "threads": 1,
        "idle_server_cores": idle,
        "steps": steps,
        "sessions_at_p95_500ms": best,
    }


def _inprocess_mode(args, pool: list[Any], model: Any) -> dict[str, Any]:
    mode = InProcess(model)
    try:
        run_step(mode, 8, args.warmup_s + 2, args.budget_ms, pool, 0.5, args.hop_s)
        steps, best = ladder(mode, args, pool)
    finally:
        mode.close()
    return {"server": mode.info, "workers": os.cpu_count(), "steps": steps, "sessions_at_p95_500ms": best}


def _step_at(res: dict[str, Any], n: int) -> dict[str, Any] | None:
    return next((s for s in res.get("steps", []) if s["sessions"] == n), None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from .throughput import _windows

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"error: unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    if any(m.startswith("ray") for m in modes):
        from ..engine.ray_node import RayNotInstalled, require_ray

        try:
            require_ray()
        except RayNotInstalled as exc:
            raise SystemExit(f"error: {exc}") from None
    pressure_start = cpu_pressure()
    model, name, checkpoint = _model()
    pool = _windows(list(model.dims), 16, np.random.default_rng(0))
    results: dict[str, Any] = {}
    for m in modes:
        log.info("mode %s", m)
        if m == "inprocess":
            results[m] = _inprocess_mode(args, pool, model)
        elif m == "zmq":
            results[m] = _zmq_mode(args, pool)
        else:
            results[m] = _ray_mode(m, args, pool)
        at = [s for s in results[m]["steps"] if s["within_budget"]]
        # the per-window CPU at the largest session count within the budget (None: none was)
        results[m]["cpu_ms_per_window"] = at[-1]["cpu_ms_per_window"] if at else None
        results[m]["cpu_ms_per_window_at_sessions"] = at[-1]["sessions"] if at else None
    goal: dict[str, Any] = {}
    z64, r64, i64 = (_step_at(results.get(k, {}), 64) for k in ("zmq", "ray1", "inprocess"))
    if z64 and r64 and z64["cpu_ms_per_window"] and r64["cpu_ms_per_window"]:
        goal["ray1_vs_zmq_cpu_per_window_at_64"] = round(r64["cpu_ms_per_window"] / z64["cpu_ms_per_window"], 2)
        if i64 and i64["cpu_ms_per_window"]:
            zo = z64["cpu_ms_per_window"] - i64["cpu_ms_per_window"]
            ro = r64["cpu_ms_per_window"] - i64["cpu_ms_per_window"]
            goal["overhead_over_inprocess_ms"] = {"zmq": round(zo, 3), "ray1": round(ro, 3)}
            goal["ray1_vs_zmq_overhead_at_64"] = round(ro / zo, 2) if zo > 0 else None
        goal["target"] = "Ray's overhead per window <= 2x the ZeroMQ server's at 64 sessions on one node"
    res = {
        "bench": "scaleout",
        "device": "cpu",
        "stamp": stamp("cpu", command_line("sentistream bench scaleout"), False),
        "model": {"name": name, "checkpoint": Path(checkpoint).name if checkpoint else ""},
        "config": {
            "budget_ms": args.budget_ms,
            "hop_s": args.hop_s,
            "step_s": args.step_s,
            "warmup_s": args.warmup_s,
            "sessions": args.sessions,
            "max_sessions": args.max_sessions,
            "sessions_per_client": args.sessions_per_client,
            "flush_ms": args.flush_ms,
            "batch_wait_ms": args.batch_wait_ms,
        },
        "modes": results,
        "goal": goal,
        # other work on the machine: the share of time some runnable task waited for a CPU
        "cpu_pressure_some_avg60": {"start": pressure_start, "end": cpu_pressure()},
    }
    for m, r in results.items():  # the two headline keys at the top level of each mode
        res[m] = {"sessions_at_p95_500ms": r["sessions_at_p95_500ms"], "cpu_ms_per_window": r["cpu_ms_per_window"]}
    out_dir = Path(args.out_dir)
    write_json(out_dir / "scaleout-cpu.json", res)
    write_markdown(out_dir / "scaleout-cpu.md", res)
    print(f"wrote {out_dir / 'scaleout-cpu.json'} and .md")
    return res


def write_markdown(path: Path, res: dict[str, Any]) -> None:
    st = res["stamp"]
    c = res["config"]
    lines = [
        "# Scale-out bench — cpu: in-process, ZeroMQ fusion server, Ray Serve (1 and 2 nodes)",
        "",
        f"- date: {st['date']}; command: `{st['command']}`; git {st['git']}",
        f"- machine: {st['device']}; CPU: {st['cpu']} ({st['cpu_count']} cores); no GPU",
        f"- load average at start / end: {st['loadavg_start']} / {st.get('loadavg_end')}; CPU pressure "
        f"(PSI some avg60, % of time a runnable task waited): {res.get('cpu_pressure_some_avg60')}",
        f"- model: {res['model']['name']} ({res['model']['checkpoint']}); each session sends one window "
        f"every {c['hop_s']:g} s; {c['step_s']:g} s per step after {c['warmup_s']:g} s of warm-up",
        f"- Ray: {c['sessions_per_client']} sessions per client, a request every {c['flush_ms']:g} ms per "
        f"client carrying the windows queued meanwhile; @serve.batch wait {c['batch_wait_ms']:g} ms",
        "",
        f"| mode | sessions at p95 ≤ {c['budget_ms']:g} ms | CPU-ms per window (at that count) "
        "| server cores used idle | start s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m, r in res["modes"].items():
        lines.append(
            f"| {m} | {r['sessions_at_p95_500ms']} | {r['cpu_ms_per_window']} ({r['cpu_ms_per_window_at_sessions']}) "
            f"| {r.get('idle_server_cores', 0.0)} | {r.get('start_s', '–')} |"
        )
    lines += [
        "",
        "| mode | sessions | windows | p50 ms | p95 ms | missed | CPU-ms / window | server part | cores used | windows / request |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m, r in res["modes"].items():
        for s in r["steps"]:
            lines.append(
                f"| {m} | {s['sessions']} | {s['windows']} | {s['latency_ms'].get('p50', '–')} | "
                f"{s['p95_ms'] or '∞'} | {s['missed'] + s['errors']} | {s['cpu_ms_per_window']} | "
                f"{s['server_cpu_ms_per_window']} | {s['cpu_cores_used']} | {s.get('windows_per_request', 1 if m == 'zmq' else '–')} |"
            )
    g = res.get("goal") or {}
    if g:
        lines += [
            "",
            f"Goal ({g['target']}): Ray on one node / ZeroMQ, CPU per window at 64 sessions: "
            f"{g.get('ray1_vs_zmq_cpu_per_window_at_64')}×; the part above in-process: "
            f"{g.get('overhead_over_inprocess_ms')} → {g.get('ray1_vs_zmq_overhead_at_64')}×.",
        ]
    lines += [
        "",
        "CPU per window: every process of the mode (this bench's own process, i.e. the sessions' clients or the "
        "in-process model, plus the server or all of the Ray cluster's processes), over the measured step, per "
        "answered window. p95 is nearest-rank over every window due, an unanswered one counting as infinite. "
        "The fusion tier only: each real session also runs its own perception (bench perception, bench latency).",
        "",
    ]
    path.write_text("\n".join(lines))


def cmd_scaleout(args: argparse.Namespace) -> int:
    show_bench_progress()
    res = run(args)
    print(json.dumps({m: res[m] for m in res["modes"]}, indent=2))
    return 0


def register(bench_subparsers) -> None:
    p = bench_subparsers.add_parser(
        "scaleout",
        help="in-process vs ZeroMQ fusion server vs Ray Serve on 1 and 2 nodes (bench/results/scaleout-cpu.json, .md)",
    )
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)} (default all)")
    p.add_argument("--sessions", default="4,16,64", help="session counts always run (default 4,16,64)")
    p.add_argument(
        "--max-sessions", type=int, default=256, help="doubling past the last count stops here (default 256)"
    )
    p.add_argument("--step-s", type=float, default=5.0, help="measured seconds per session count (default 5)")
    p.add_argument("--warmup-s", type=float, default=1.0, help="unmeasured seconds before each step (default 1)")
    p.add_argument("--hop-s", type=float, default=HOP_S, help="seconds between a session's windows (default 0.25)")
    p.add_argument("--budget-ms", type=float, default=500.0, help="p95 latency budget per window (default 500)")
    p.add_argument("--sessions-per-client", type=int, default=64, help="Ray: sessions sharing one client (default 64)")
    p.add_argument("--flush-ms", type=float, default=25.0, help="Ray: a client's request interval (default 25)")
    p.add_argument("--batch-wait-ms", type=float, default=2.0, help="Ray: @serve.batch wait (default 2)")
    p.add_argument("--out-dir", default=str(RESULTS), help="where results go (default bench/results)")
    p.set_defaults(func=cmd_scaleout)
