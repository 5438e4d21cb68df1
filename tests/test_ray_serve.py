"""The fusion model and Whisper on Ray Serve: a real 2-node cluster on 127.0.0.1 (head + worker,
started as subprocesses and stopped by pid), the deployments made by `sentistream serve --engine
ray --whisper`, two sessions through the real graph, a replica SIGKILLed mid-stream, the real ASR
stage decoding espeak-ng speech on the Whisper deployment, malformed requests, and every
listening socket of every process the test started on loopback. Also: the command without the
extra, and the model's ONNX export as a Triton model repository (onnxruntime runs it here).

One cluster and one `serve` for the whole module (the fixture is module-scoped): starting them
is most of the file's time."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import read_jsonl, sentistream_cmd

from sentistream.bench.procs import descendants
from sentistream.engine.asr_server import RayWhisper
from sentistream.engine.fusion_wire import RemoteFusionError
from sentistream.engine.messages import Message, now_ns
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
DURATION_S = 11.0


def _free_port() -> int:
    from sentistream.engine.ray_node import free_port

    return free_port()


def _replica_pids(cluster, deployment: bytes = b"ServeReplica:fusion:FusionModel") -> dict[int, int]:
    """Replica pid (fusion by default) -> the node (launcher pid) it runs on."""
    out = {}
    for node in cluster.nodes:
        for pid in set(session_pids(node.pid)) | set(descendants(node.pid)):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if deployment in cmd:
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
    """A head and a worker node (2 logical CPUs each) on 127.0.0.1, and `sentistream serve --engine
    ray --whisper` attached to them: two fusion replicas, one per node, and one Whisper replica."""
    tmp = tmp_path_factory.mktemp("ray")
    t0 = time.monotonic()
    cluster = start_local_cluster(worker_nodes=1, node_cpus=2)
    t_cluster = time.monotonic() - t0
    port = _free_port()
    conf = tmp / "ray.toml"
    conf.write_text(
        "[ray]\n"
        f"http_port = {port}\n"
        "min_replicas = 2\ninitial_replicas = 2\nmax_replicas = 2\n"
        "num_cpus = 1.0\nbatch_wait_timeout_s = 0.005\n"
        "whisper_num_cpus = 1.0\nwhisper_min_replicas = 1\nwhisper_initial_replicas = 1\nwhisper_max_replicas = 1\n"
    )
    env = {**os.environ, "RAY_AUTH_TOKEN": cluster.token, "HF_HUB_OFFLINE": "1"}
    serve = subprocess.Popen(
        sentistream_cmd(
            "serve", "--engine", "ray", "--whisper", "--config", str(conf), "--ray-address", cluster.gcs_address
        ),
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
        whisper = [ln for ln in lines if ln.startswith("whisper on Ray Serve at")]
        assert whisper and f'asr.server = "ray://127.0.0.1:{port}/whisper"' in whisper[0], lines[-5:]
        print(f"\ncluster up in {t_cluster:.1f} s, both applications answer after {time.monotonic() - t0:.1f} s")
        yield {
            "cluster": cluster,
            "serve": serve,
            "address": address,
            "whisper": f"ray://127.0.0.1:{port}/whisper",
            "port": port,
            "tmp": tmp,
        }
    finally:
        t_stop = time.monotonic()
        if serve.poll() is None:
            serve.send_signal(signal.SIGINT)  # it deletes the application, then exits
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
        cluster.stop()  # each node by its own pid: never `ray stop`
        print(f"\nserve and the cluster stopped in {time.monotonic() - t_stop:.1f} s")
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
        probe = RayFusion(ray_app["address"], timeout_s=5)
        arrays = _window_arrays(probe.info()["dims"], 1)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        stream_t_at_kill = [read_jsonl(o)[-1]["window"]["t1"] for o in outs]
        # restarted: a new replica process is there (started_after) and it answers (restarted_after)
        started_after = restarted_after = None
        try:
            while time.monotonic() - killed_at < 60 and restarted_after is None:
                now = _replica_pids(cluster)
                new = set(now) - set(replicas)
                if new and started_after is None:
                    started_after = time.monotonic() - killed_at
                if new:
                    try:
                        if probe.infer_arrays(arrays).meta["replica_pid"] in new:
                            restarted_after = time.monotonic() - killed_at
                    except RemoteFusionError:
                        pass
                time.sleep(0.1)
        finally:
            probe.close()
        results = [r.communicate(timeout=150) for r in runs]
    finally:
        for r in runs:
            if r.poll() is None:
                r.kill()
    assert restarted_after is not None, f"Ray did not replace the killed replica within 60 s ({started_after})"
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
    print(
        f"replica {victim} SIGKILLed; a new one started after {started_after:.1f} s and answered after "
        f"{restarted_after:.1f} s; " + "; ".join(report)
    )


@needs_ray
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_the_asr_stage_decodes_real_speech_on_the_whisper_deployment(ray_app, tmp_path):
    """The graph's real ASR stage (in this process, engine/harness.run_stage) with
    asr.server = ray://.../whisper: espeak-ng speech in, the words out, every decode on the replica."""
    from test_asr import CHUNK, SENTENCES, tts, wer

    from sentistream.engine.asr_server import open_whisper
    from sentistream.engine.config import load_config
    from sentistream.engine.harness import run_stage, stage_spec
    from sentistream.engine.stages.asr import AsrStage

    cfg = load_config(None, {"asr": {"server": ray_app["whisper"], "server_timeout_s": 30.0}})
    assert isinstance(open_whisper(cfg.asr), RayWhisper)
    client = RayWhisper(ray_app["whisper"], timeout_s=30)
    before = client.info()
    assert before["engine"] == "ray" and before["compute_type"] == "int8" and before["model_dir"]
    silence = np.zeros(8000, np.float32)
    audio = np.concatenate([silence, tts(SENTENCES[0], tmp_path / "s.wav"), silence])
    inputs = [
        Message("audio_chunk", "audio", n, now_ns(), k / 16000, [audio[k : k + CHUNK]])
        for n, k in enumerate(range(0, audio.size, CHUNK))
    ]
    inputs.append(Message("eos", "audio", len(inputs), now_ns(), audio.size / 16000))
    stage = AsrStage(stage_spec("asr", inputs=["audio"], outputs=["words", "voice"], config=cfg), cfg)
    run = run_stage(stage, inputs)
    committed = [w["text"] for m in run.of_kind("words") for w in m.meta["committed"]]
    text = " ".join(committed)
    assert wer(SENTENCES[0], text) <= 0.2, text
    after = client.info()
    assert after["pid"] == before["pid"]
    assert after["stats"]["requests"] > before["stats"]["requests"] and after["stats"]["errors"] == 0
    client.close()


@needs_ray
def test_a_malformed_decode_request_gets_a_400_and_the_whisper_replica_lives(ray_app):
    before = _replica_pids(ray_app["cluster"], b"ServeReplica:whisper:WhisperModel")
    assert len(before) == 1
    conn = http.client.HTTPConnection("127.0.0.1", ray_app["port"], timeout=30)

    def post(body: bytes) -> tuple[int, str]:
        conn.request("POST", "/whisper", body=body)
        resp = conn.getresponse()
        return resp.status, unframe_body(resp.read()).meta.get("error", "")

    try:
        status, err = post(b"RIFF\x00\x00 a wav file is not a request")
        assert status == 400 and "malformed request" in err, err
        two_d = Message("asr_request", "asr", 3, 0, 0.0, [np.zeros((2, 800), np.float32)], meta={"op": "transcribe"})
        status, err = post(frame_body(two_d))
        assert status == 400 and "one float32 [N] array" in err, err
        ints = Message("asr_request", "asr", 4, 0, 0.0, [np.zeros(800, np.int16)], meta={"op": "transcribe"})
        assert post(frame_body(ints))[0] == 400
        evil = Message(
            "asr_request",
            "asr",
            5,
            0,
            0.0,
            [np.zeros(1600, np.float32)],
            meta={"op": "transcribe", "options": {"evil": "x"}},
        )
        status, err = post(frame_body(evil))
        assert status == 400 and "unknown decode option 'evil'" in err, err
        status, err = post(frame_body(Message("fusion_request", "fusion", 6, 0, 0.0, meta={"op": "info"})))
        assert status == 400 and "expected an asr_request" in err, err
    finally:
        conn.close()
    client = RayWhisper(ray_app["whisper"], timeout_s=30)
    try:
        segments, _ = client.transcribe(np.zeros(16000, np.float32), encoder_pad_s=1.0, language="en")
        assert isinstance(segments, list)  # a second of silence: answered, whatever Whisper makes of it
        assert client.info()["stats"]["malformed"] >= 5
    finally:
        client.close()
    assert _replica_pids(ray_app["cluster"], b"ServeReplica:whisper:WhisperModel") == before


def test_a_malformed_asr_server_address_is_a_config_error():
    from sentistream.engine.config import ConfigError, load_config

    for bad in ("ray://127.0.0.1/whisper", "ray://127.0.0.1:8000/", "ray://127.0.0.1:8000/a/b", "http://x:1/w"):
        with pytest.raises(ConfigError, match="asr.server"):
            load_config(None, {"asr": {"server": bad}})
    assert load_config(None, {"asr": {"server": "ray://127.0.0.1:8000/whisper"}}).asr.server.endswith("/whisper")
    with pytest.raises(ConfigError, match="whisper_app and ray.app must differ"):
        load_config(None, {"ray": {"whisper": True, "whisper_app": "fusion"}})


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
