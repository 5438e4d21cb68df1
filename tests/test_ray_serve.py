"""The fusion model on Ray Serve: a real 2-node cluster on 127.0.0.1 (head + worker, started as
subprocesses and stopped by pid), the deployment made by `sentistream serve --engine ray`, two
sessions through the real graph, a replica SIGKILLed mid-stream, malformed requests, and every
listening socket of every process the test started on loopback. Also: the command without the
extra, and the model's ONNX export as a Triton model repository (onnxruntime runs it here)."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import read_jsonl, sentistream_cmd

from sentistream.bench.procs import descendants
from sentistream.engine.messages import Message
from sentistream.engine.ray_client import RayFusion, frame_body, unframe_body
from sentistream.engine.ray_node import RayNotInstalled, require_ray, session_pids
from sentistream.engine.ray_serve import start_local_cluster

try:
    require_ray()
    NO_RAY = ""
except RayNotInstalled as exc:  # the optional extra is missing: the cluster tests cannot run
    NO_RAY = f"ray[serve] is not installed ({exc})"

needs_ray = pytest.mark.skipif(bool(NO_RAY), reason=NO_RAY)

pytestmark = pytest.mark.timeout(300)

HOP = 0.25
DURATION_S = 14.0


def _free_port() -> int:
    from sentistream.engine.ray_node import free_port

    return free_port()


def _replica_pids(cluster) -> dict[int, int]:
    """Fusion replica pid -> the node (launcher pid) it runs on."""
    out = {}
    for node in cluster.nodes:
        for pid in set(session_pids(node.pid)) | set(descendants(node.pid)):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ServeReplica:fusion:FusionModel" in cmd:
                out[pid] = node.pid
    return out


def _listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket the processes hold (/proc/net/tcp{,6})."""
    table: dict[str, tuple[str, int]] = {}
    for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(path).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A":  # LISTEN
                continue
            hexip, hexport = f[1].split(":")
            raw = bytes.fromhex(hexip)
            if v6:
                words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
                b = b"".join(words)
                addr = (
                    ".".join(str(x) for x in b[12:]) if b[:12] == b"\0" * 10 + b"\xff\xff" else b.hex()
                )  # ::ffff:a.b.c.d -> a.b.c.d
                addr = "::1" if b == b"\0" * 15 + b"\x01" else addr
            else:
                addr = ".".join(str(x) for x in raw[::-1])
            table[f[9]] = (addr, int(hexport, 16))
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in table:
                out.append((pid, *table[link[8:-1]]))
    return out


@pytest.fixture(scope="module")
def ray_app(tmp_path_factory):
    """A head and a worker node (1 CPU each) on 127.0.0.1, and `sentistream serve --engine ray`
    attached to them: two replicas, one per node."""
    tmp = tmp_path_factory.mktemp("ray")
    cluster = start_local_cluster(worker_nodes=1, node_cpus=1)
    port = _free_port()
    conf = tmp / "ray.toml"
    conf.write_text(
        "[ray]\n"
        f"http_port = {port}\n"
        "min_replicas = 2\ninitial_replicas = 2\nmax_replicas = 2\n"
        "num_cpus = 1.0\nbatch_wait_timeout_s = 0.005\n"
    )
    env = {**os.environ, "RAY_AUTH_TOKEN": cluster.token, "HF_HUB_OFFLINE": "1"}
    serve = subprocess.Popen(
        sentistream_cmd("serve", "--engine", "ray", "--config", str(conf), "--ray-address", cluster.gcs_address),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = serve.stdout.readline() if serve.stdout else ""
            if not line:
                break
            lines.append(line)
            if line.startswith("fusion on Ray Serve at"):
                break
        assert lines and lines[-1].startswith("fusion on Ray Serve at"), "".join(lines[-30:])
        address = lines[-1].split()[5].rstrip(":")
        assert address == f"ray://127.0.0.1:{port}/fusion"
        yield {"cluster": cluster, "serve": serve, "address": address, "port": port, "tmp": tmp}
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGINT)  # it deletes the application, then exits
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
        cluster.stop()  # each node by its own pid: never `ray stop`
        left = [p for n in cluster.nodes for p in session_pids(n.pid)]
        assert not left, f"Ray processes left behind: {left}"


def _window_arrays(dims: list[int], n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.normal(0, 0.3, (n, 16, dims[0])).astype(np.float32),
        rng.normal(0, 1, (n, 60, dims[1])).astype(np.float32),
        rng.normal(0, 0.1, (n, 45, dims[2])).astype(np.float32),
        np.ones((n, 16), bool),
        np.ones((n, 60), bool),
        np.ones((n, 45), bool),
    ]


@needs_ray
def test_replicas_on_both_nodes_answer_like_the_local_model(ray_app):
    """Several windows per request, scored as the engine's own model scores them."""
    import torch

    from sentistream.engine.backends import EagerBackend
    from sentistream.engine.config import load_config
    from sentistream.engine.fusion_server import load_fusion_model
    from sentistream.models.base import FusionInputs

    client = RayFusion(ray_app["address"], timeout_s=30)
    try:
        info = client.info()
        assert info["engine"] == "ray" and info["model"] and len(info["dims"]) == 3
        arrays = _window_arrays(info["dims"], 5)
        pids = set()
        for _ in range(24):
            reply = client.infer_arrays(arrays)
            pids.add(reply.meta["replica_pid"])
        # the head's proxy routes to both nodes' replicas (RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING=0)
        replicas = _replica_pids(ray_app["cluster"])
        assert pids == set(replicas), (pids, replicas)
        assert len(set(replicas.values())) == 2, "the two replicas are not on two nodes"
        model, *_ = load_fusion_model(load_config())
        local = EagerBackend(model, torch.device("cpu"))(FusionInputs(*(torch.from_numpy(a) for a in arrays)))
        np.testing.assert_allclose(reply.arrays[0], local.score.numpy(), atol=1e-4)
        np.testing.assert_allclose(reply.arrays[1], local.contributions.numpy(), atol=1e-4)
        # windows submitted together travel as one request
        rids = [client.submit(FusionInputs(*(torch.from_numpy(a[i : i + 1]) for a in arrays))) for i in range(5)]
        got: dict[int, object] = {}
        deadline = time.monotonic() + 30
        while len(got) < 5 and time.monotonic() < deadline:
            for rid, out, meta in client.collect(0.5):
                got[rid] = out
                assert meta["windows"] == 5
        assert sorted(got) == sorted(rids)
        for i, rid in enumerate(rids):
            np.testing.assert_allclose(got[rid].score.numpy(), local.score.numpy()[i : i + 1], atol=1e-4)  # type: ignore[union-attr]
    finally:
        client.close()


@needs_ray
def test_a_malformed_request_gets_a_clear_error_and_the_replica_lives(ray_app):
    before = _replica_pids(ray_app["cluster"])
    conn = http.client.HTTPConnection("127.0.0.1", ray_app["port"], timeout=30)
    try:
        conn.request("POST", "/fusion", body=b"\x00garbage, not a framed message")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 400
        assert "malformed request" in unframe_body(body).meta["error"]
        # well framed, wrong shapes: the reason names the array and the shape it wants
        bad = Message(
            "fusion_request", "fusion", 7, 0, 0.0, [np.zeros((1, 4, 7), np.float32)] * 6, meta={"op": "infer"}
        )
        conn.request("POST", "/fusion", body=frame_body(bad))
        resp = conn.getresponse()
        err = unframe_body(resp.read()).meta["error"]
        assert resp.status == 400 and "text: expected float32 [1, L, " in err, err
        conn.request(
            "POST", "/fusion", body=frame_body(Message("fusion_request", "fusion", 8, 0, 0.0, meta={"op": "?"}))
        )
        resp = conn.getresponse()
        assert resp.status == 400 and "unknown op" in unframe_body(resp.read()).meta["error"]
    finally:
        conn.close()
    client = RayFusion(ray_app["address"], timeout_s=30)
    try:
        reply = client.infer_arrays(_window_arrays(client.info()["dims"], 2))
        assert reply.arrays[0].shape == (2,)
    finally:
        client.close()
    assert _replica_pids(ray_app["cluster"]) == before, "a malformed request cost a replica"


@needs_ray
def test_two_graph_sessions_survive_a_killed_replica_and_nothing_listens_off_host(ray_app):
    """Two `sentistream run` sessions with fusion.server = ray://...; one replica SIGKILLed
    mid-stream: Ray starts a new one, both sessions go on; what was lost is counted."""
    tmp = ray_app["tmp"]
    conf = tmp / "session.toml"
    conf.write_text(f'[fusion]\nserver = "{ray_app["address"]}"\nserver_timeout_s = 2.0\n')
    outs = [tmp / f"events-{i}.jsonl" for i in range(2)]
    runs = [
        subprocess.Popen(
            sentistream_cmd(
                "run",
                "--source",
                "demo",
                "--duration",
                str(DURATION_S),
                "--config",
                str(conf),
                "--jsonl",
                str(out),
                "--view",
                "none",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]
    cluster = ray_app["cluster"]
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not all(o.exists() and len(read_jsonl(o)) >= 12 for o in outs):
            assert all(r.poll() is None for r in runs), "a session ended before its events came"
            time.sleep(0.2)
        assert all(len(read_jsonl(o)) >= 12 for o in outs), "the sessions did not get going"
        # every listening socket of every process this test started: the nodes (and the Ray
        # workers in their sessions), `sentistream serve`, the two graphs and their stages
        mine = {ray_app["serve"].pid, *descendants(ray_app["serve"].pid)}
        for n in cluster.nodes:
            mine |= {n.pid, *session_pids(n.pid), *descendants(n.pid)}
        for r in runs:
            mine |= {r.pid, *descendants(r.pid)}
        sockets = _listening(mine)
        assert sockets, "no listening socket found: the check would pass vacuously"
        off_host = [s for s in sockets if s[1] not in ("127.0.0.1", "::1")]
        assert not off_host, f"listening beyond loopback: {off_host}"

        replicas = _replica_pids(cluster)
        victim = min(replicas)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        stream_t_at_kill = [read_jsonl(o)[-1]["window"]["t1"] for o in outs]
        restarted_after = None
        while time.monotonic() - killed_at < 60:
            now = _replica_pids(cluster)
            if len(now) == 2 and victim not in now:
                restarted_after = time.monotonic() - killed_at
                break
            time.sleep(0.2)
        results = [r.communicate(timeout=150) for r in runs]
    finally:
        for r in runs:
            if r.poll() is None:
                r.kill()
    assert restarted_after is not None, "Ray did not replace the killed replica within 60 s"
    expected = round(DURATION_S / HOP)
    report = []
    for i, (run, out, (_, stderr)) in enumerate(zip(runs, outs, results)):
        assert run.returncode == 0, stderr[-3000:]
        events = read_jsonl(out)
        hops = [e for e in events if not e.get("final")]
        local = sum(1 for e in events if e["model"].get("backend") == "local-fallback")
        lost = expected - len(hops)
        report.append(f"session {i}: {len(hops)} of {expected} windows, {lost} lost, {local} scored locally")
        t1 = [e["window"]["t1"] for e in hops]
        assert t1 == sorted(t1)
        assert abs(lost) <= 1, report[-1]  # a window Ray failed is scored locally, never dropped
        assert sum(1 for e in hops if e["window"]["t1"] > stream_t_at_kill[i] + 1.0) >= 8, "no events after the kill"
        assert sum(1 for e in events if e["model"].get("backend") == "remote") >= len(events) - 8
    print(f"replica {victim} SIGKILLed; a new one answered after {restarted_after:.1f} s; " + "; ".join(report))


def test_without_ray_the_command_says_what_to_install(tmp_path):
    """A `ray` without Serve on the path stands for a machine without the extra."""
    fake = tmp_path / "ray"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('not the real ray')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "sentistream.cli", "serve", "--engine", "ray"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'sentistream[ray]'" in proc.stderr


def test_onnx_export_has_named_tensors_a_dynamic_batch_and_a_triton_config(tmp_path):
    import onnxruntime as ort
    import torch

    from sentistream.cli.serve import export_onnx_repository
    from sentistream.engine.backends import EagerBackend, pad_inputs
    from sentistream.engine.config import load_config
    from sentistream.engine.fusion_server import load_fusion_model
    from sentistream.models.base import FusionInputs

    # in-process: what `sentistream serve --export-onnx DIR --text-tokens 32` runs
    export_onnx_repository(load_config(), str(tmp_path), 32)
    onnx_path = tmp_path / "sentistream_fusion" / "1" / "model.onnx"
    config = (tmp_path / "sentistream_fusion" / "config.pbtxt").read_text()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names == ["text", "audio", "vision", "text_mask", "audio_mask", "vision_mask"]
    assert [o.name for o in sess.get_outputs()] == ["score", "contributions"]
    assert all(isinstance(i.shape[0], str) for i in sess.get_inputs())  # the batch axis is dynamic
    model, *_ = load_fusion_model(load_config())
    dims = list(model.dims)
    for name, inp in zip(names, sess.get_inputs()):
        assert f'name: "{name}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, inp.shape[1:]))} ]' in config
    assert "dynamic_batching" in config and "max_batch_size: 64" in config and "NOT TESTED" in config
    arrays = _window_arrays(dims, 3)
    x = FusionInputs(*(torch.from_numpy(a) for a in arrays))
    x = pad_inputs(x, (32, 60, 45))
    feed = {n: getattr(x, n).float().numpy() for n in names}
    score, contrib = sess.run(None, feed)
    ref = EagerBackend(model, torch.device("cpu"))(x)
    assert score.shape == (3,) and contrib.shape == (3, 3)
    np.testing.assert_allclose(score, ref.score.numpy(), atol=1e-4)
