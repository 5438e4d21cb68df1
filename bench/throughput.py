"""`sentistream bench throughput`: how many live sessions one machine's fusion server carries
within a p95 latency budget (default 500 ms).

    sentistream bench throughput                    # full run (steps of 10 s)
    sentistream bench throughput --smoke            # a quick check (steps of 2 s, up to 32 sessions)
    sentistream bench throughput --device cuda      # on a GPU machine

It starts ``sentistream serve`` (or uses ``--server ADDRESS``) and drives it with synthetic live
sessions: each sends one window per hop (``--hop-s``: 250 ms, as the live fusion stage does by
default; 0.0667 s for the low_latency profile's one window per frame at 15 fps; phases spread evenly), whatever happened to its previous window, with live-sized inputs (text 8..64 tokens x 384,
audio 60 x 59, vision 45 x face features). A window's latency is the time from sending it to its
reply (queueing, batching, the forward pass and both socket hops). The number of sessions doubles
until the p95 exceeds the budget (or windows go unanswered), then a bisection narrows the largest
count that stays within it: ``live_sessions_within_p95``.

This measures the fusion tier only: each real session also runs its own perception (face mesh,
audio features, Whisper) and text encoder, which on a CPU cost far more than fusion; those are
measured by ``sentistream bench perception`` and the pipeline part of ``bench latency``.
Writes ``bench/results/throughput-<device>.json`` and ``.md`` (``-smoke`` with ``--smoke``).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import RESULTS, command_line, device_tag, show_bench_progress, stamp, summary, write_json

log = logging.getLogger("sentistream.bench.throughput")

HOP_S = 0.25


def start_server(args, port: int) -> tuple[subprocess.Popen, str]:
    address = f"tcp://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "sentistream.cli",
        "serve",
        "--address",
        address,
        "--model",
        args.model,
        "--max-queue-delay-us",
        str(args.max_queue_delay_us),
        "--max-batch",
        str(args.max_batch),
        "--threads",
        str(args.threads),
        "--max-queue-per-session",
        "8",
    ]
    if args.backend:
        cmd += ["--backend", args.backend]
    if args.device:
        cmd += ["--device", args.device]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "fusion server on" in line:
            return proc, address
    proc.kill()
    raise SystemExit("error: the fusion server did not start:\n" + "".join(lines[-20:]))


def _windows(dims: list[int], n: int, rng: np.random.Generator) -> list[Any]:
    import torch

    from ..models.base import FusionInputs

    out = []
    for _ in range(n):
        lt = int(rng.integers(8, 65))
        t = torch.from_numpy(rng.normal(0, 0.3, (1, lt, dims[0])).astype(np.float32))
        a = torch.from_numpy(rng.normal(0, 1, (1, 60, dims[1])).astype(np.float32))
        v = torch.from_numpy(rng.normal(0, 0.1, (1, 45, dims[2])).astype(np.float32))
        out.append(FusionInputs.from_lengths(t, a, v))
    return out


def _raise_fd_limit(n: int) -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, max(soft, 4 * n + 256))
        if want > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass


def run_step(
    address: str,
    n_sessions: int,
    seconds: float,
    budget_ms: float,
    dims: list[int],
    warmup_s: float = 1.0,
    seed: int = 0,
    hop_s: float = HOP_S,
) -> dict[str, Any]:
    """N synthetic sessions for ``seconds`` (after ``warmup_s``); returns the latency summary."""
    import heapq

    import zmq

    from ..engine.fusion_client import RemoteFusion

    rng = np.random.default_rng(seed + n_sessions)
    pool = _windows(dims, 16, rng)
    _raise_fd_limit(n_sessions)
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, n_sessions + 64)
    # a window unanswered after twice the budget is dropped by the server, not run late
    clients = [RemoteFusion(address, timeout_s=2 * budget_ms / 1e3, context=ctx) for _ in range(n_sessions)]
    poller = zmq.Poller()
    index = {}
    for i, c in enumerate(clients):
        poller.register(c.sock, zmq.POLLIN)
        index[c.sock] = i
    start = time.monotonic() + 0.2
    measure_from = start + warmup_s
    end = measure_from + seconds
    heap = [(start + hop_s * i / n_sessions, i) for i in range(n_sessions)]  # (next send, session)
    heapq.heapify(heap)
    sent: dict[tuple[int, int], float] = {}
    lat: list[float] = []
    lag: list[float] = []
    errors = 0
    n_sent = 0
    k = 0
    try:
        while True:
            now = time.monotonic()
            if now >= end and not any(measured for _, measured in sent.values()):
                break
            if now >= end + 2 * budget_ms / 1e3:
                break
            while now < end and heap and heap[0][0] <= now:
                due, i = heapq.heappop(heap)
                rid = clients[i].submit(pool[k % len(pool)])
                k += 1
                sent[(i, rid)] = (now, due >= measure_from)
                if due >= measure_from:
                    lag.append((now - due) * 1e3)
                    n_sent += 1
                heapq.heappush(heap, (due + hop_s, i))
            wait_ms = max(0.0, (heap[0][0] - time.monotonic()) * 1e3) if time.monotonic() < end else 20.0
            for sock, _ in poller.poll(min(wait_ms, 20.0)):
                i = index[sock]
                for rid, out, _meta in clients[i].collect(0):
                    entry = sent.pop((i, rid), None)
                    if entry is None:
                        continue
                    t_sent, measured = entry
                    if isinstance(out, Exception):
                        errors += int(measured)
                        continue
                    if measured:
                        lat.append((time.monotonic() - t_sent) * 1e3)
    finally:
        for c in clients:
            c.close()
        ctx.term()
    missed = sum(1 for _, measured in sent.values() if measured)  # never answered in time
    # unanswered windows count as over budget for the percentile (nearest-rank, no interpolation)
    full = np.sort(np.concatenate([np.asarray(lat, float), np.full(missed + errors, np.inf)]))

    def rank(q: float) -> float:
        return float(full[max(0, int(np.ceil(q * full.size)) - 1)]) if full.size else float("inf")

    p95, p99 = rank(0.95), rank(0.99)
    lag_s = summary(lag)
    return {
        "sessions": n_sessions,
        "windows": n_sent,
        "answered": len(lat),
        "errors": errors,
        "missed": missed,
        "latency_ms": summary(lat),
        "p95_ms": round(p95, 3) if np.isfinite(p95) else None,
        "p99_ms": round(p99, 3) if np.isfinite(p99) else None,
        "within_budget": bool(np.isfinite(p95) and p95 <= budget_ms),
        "send_lag_ms": lag_s,
        "generator_saturated": bool((lag_s.get("p99") or 0) > 50.0),
        "windows_per_s": round(len(lat) / seconds, 1),
    }


def wait_idle(address: str, timeout_s: float = 60.0) -> None:
    """Until the server has nothing queued (the previous step's backlog must not hit the next)."""
    from ..engine.fusion_client import RemoteFusion

    client = RemoteFusion(address, timeout_s=10)
    try:
        deadline = time.monotonic() + timeout_s
        while client.info(refresh=True).get("pending", 0) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        client.close()


def search(address: str, args, dims: list[int]) -> tuple[list[dict], int]:
    steps: list[dict] = []
    good, bad = 0, None
    n = 1
    while n <= args.max_sessions:
        wait_idle(address)
        r = run_step(address, n, args.step_s, args.budget_ms, dims, hop_s=args.hop_s)
        steps.append(r)
        log.info(
            "%d sessions: p95 %s ms (budget %s), %d windows, %d missed, send lag p95 %s ms",
            n,
            r["p95_ms"],
            args.budget_ms,
            r["windows"],
            r["missed"],
            r["send_lag_ms"].get("p99"),
        )
        if r["within_budget"]:
            good = n
            n *= 2
        else:
            bad = n
            break
    if bad is not None:
        for _ in range(args.bisect):
            if bad - good <= max(1, good // 8):
                break
            mid = (good + bad) // 2
            wait_idle(address)
            r = run_step(address, mid, args.step_s, args.budget_ms, dims, hop_s=args.hop_s)
            steps.append(r)
            log.info("%d sessions: p95 %s ms", mid, r["p95_ms"])
            if r["within_budget"]:
                good = mid
            else:
                bad = mid
    return steps, good


def write_markdown(path: Path, res: dict[str, Any]) -> None:
    st = res["stamp"]
    lines = [f"# Throughput bench — {res['device_tag']}", ""]
    if st.get("smoke"):
        lines += ["**Smoke run**: short steps on a possibly busy machine; not a result to quote.", ""]
    lines += [
        f"- date: {st['date']}; command: `{st['command']}`; git {st['git']}",
        f"- device: {st['device']}; CPU: {st['cpu']} ({st['cpu_count']} cores)"
        + (f"; GPU: {st.get('gpu')} (driver {st.get('driver', '?')})" if st.get("gpu") else ""),
        f"- load average at start / end: {st['loadavg_start']} / {st.get('loadavg_end')}",
        f"- server: {res['server'].get('model')} via {res['server'].get('backend')} "
        f"({res['server'].get('reason')}); max batch {res['config']['max_batch']}, "
        f"max queue delay {res['config']['max_queue_delay_us']} us, threads {res['config']['threads']}",
        f"- each session sends one window every {res['config'].get('hop_s', HOP_S):g} s",
        "",
        f"**Live sessions within p95 ≤ {res['config']['budget_ms']:g} ms: "
        f"{res['live_sessions_within_p95']}** (fusion tier only; see bench/README.md)",
        "",
        "| sessions | windows | p50 ms | p95 ms | p99 ms | missed | windows/s | send lag p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(res["steps"], key=lambda r: r["sessions"]):
        lat = r["latency_ms"]
        lines.append(
            f"| {r['sessions']} | {r['windows']} | {lat.get('p50', '–')} | {r['p95_ms'] or '∞'} | "
            f"{r.get('p99_ms') or '∞'} | {r['missed'] + r['errors']} | {r['windows_per_s']} | "
            f"{r['send_lag_ms'].get('p99', '–')} |"
        )
    lines += [
        "",
        "p95 and p99 are nearest-rank over every window sent, an unanswered one counting as infinite.",
        "",
        f"Server statistics at the end: `{json.dumps(res['server'].get('stats', {}))}`",
        "",
    ]
    path.write_text("\n".join(lines))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ..engine.fusion_client import RemoteFusion
    from ..engine.supervisor import free_tcp_port

    smoke = bool(args.smoke)
    if smoke:
        args.step_s = args.step_s or 2.0
        args.max_sessions = min(args.max_sessions, 32)
        args.bisect = min(args.bisect, 1)
    args.step_s = args.step_s or 10.0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.device = device
    proc: subprocess.Popen | None = None
    address = args.server
    if not address:
        proc, address = start_server(args, free_tcp_port())
    try:
        probe = RemoteFusion(address, timeout_s=30)
        info = probe.info()
        probe.close()
        steps, best = search(address, args, list(info["dims"]))
        probe = RemoteFusion(address, timeout_s=30)
        info = probe.info(refresh=True)
        probe.close()
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    tag = args.tag or device_tag(device)
    res = {
        "bench": "throughput",
        "device": device,
        "device_tag": tag,
        "stamp": stamp(device, command_line("sentistream bench throughput"), smoke),
        "config": {
            "budget_ms": args.budget_ms,
            "hop_s": args.hop_s,
            "max_batch": args.max_batch,
            "max_queue_delay_us": args.max_queue_delay_us,
            "threads": args.threads,
            "step_s": args.step_s,
            "model": args.model,
        },
        "server": info,
        "live_sessions_within_p95": best,
        "live_sessions_within_p95_note": "fusion tier only: perception and text encoding excluded",
        "steps": steps,
    }
    out_dir = Path(args.out_dir)
    stem = f"throughput-{tag}{'-smoke' if smoke else ''}"
    write_json(out_dir / f"{stem}.json", res)
    write_markdown(out_dir / f"{stem}.md", res)
    print(f"wrote {out_dir / (stem + '.json')} and .md")
    return res


def cmd_throughput(args: argparse.Namespace) -> int:
    show_bench_progress()
    res = run(args)
    print(
        json.dumps({"live_sessions_within_p95": res["live_sessions_within_p95"], "budget_ms": args.budget_ms}, indent=2)
    )
    return 0


def register(bench_subparsers) -> None:
    p = bench_subparsers.add_parser(
        "throughput", help="live sessions per machine within a p95 budget (bench/results/throughput-<device>.json, .md)"
    )
    p.add_argument(
        "--hop-s",
        type=float,
        default=HOP_S,
        help="seconds between a session's windows (default 0.25, the default profile; "
        "0.0667 = one per frame at 15 fps, the low_latency profile)",
    )
    p.add_argument("--budget-ms", type=float, default=500.0, help="p95 latency budget per window (default 500)")
    p.add_argument("--server", default="", help="use a running `sentistream serve` at this address")
    p.add_argument("--model", default="default", help="fusion model the started server serves (default: default)")
    p.add_argument("--backend", default="", help="fusion backend of the started server (default: auto)")
    p.add_argument("--device", default="", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--max-batch", type=int, default=256, help="server max batch (default 256)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="server queue delay (default 2000)")
    p.add_argument("--threads", type=int, default=0, help="server intra-op threads (0 = torch's default)")
    p.add_argument("--step-s", type=float, default=0.0, help="seconds per session count (default 10; 2 with --smoke)")
    p.add_argument("--max-sessions", type=int, default=4096, help="stop doubling here (default 4096)")
    p.add_argument("--bisect", type=int, default=3, help="bisection steps after the first failure (default 3)")
    p.add_argument("--out-dir", default=str(RESULTS), help="where results go (default bench/results)")
    p.add_argument("--tag", default="", help="file-name tag (default: cpu, or the GPU's name)")
    p.add_argument(
        "--smoke", action="store_true", help="a quick check: 2 s steps, at most 32 sessions, results named *-smoke.*"
    )
    p.set_defaults(func=cmd_throughput)
