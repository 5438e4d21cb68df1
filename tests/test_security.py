"""Security defaults: loopback binds, CURVE required off-host, a peer without the right key
gets nothing, and nothing that crosses a socket is unpickled or evaluated.

Nothing here binds a non-loopback address (not allowed on CI machines): the CURVE path is
tested on 127.0.0.1 with `transport.curve = true`, which forces it.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
import tokenize
from pathlib import Path

import pytest
import zmq
import zmq.auth
from conftest import REPO, interrupt_and_reap, read_jsonl, sentistream_cmd

from sentistream.bench.procs import descendants, stage_pids
from sentistream.engine.config import ConfigError, load_config
from sentistream.engine.messages import decode
from sentistream.engine.security import is_local_address, is_loopback_host
from sentistream.engine.supervisor import Supervisor, free_tcp_port
from sentistream.pipelines.standard import standard_pipeline


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("keys") / "keys"
    proc = subprocess.run(sentistream_cmd("keys", "--dir", str(d)), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return d


def test_keys_command_makes_two_key_pairs_with_private_secrets(keys_dir):
    assert zmq.has("curve")
    names = sorted(p.name for p in keys_dir.iterdir())
    assert names == ["client.key", "client.key_secret", "server.key", "server.key_secret"]
    for name in ("client.key_secret", "server.key_secret"):
        assert stat.S_IMODE((keys_dir / name).stat().st_mode) == 0o600
        public, secret = zmq.auth.load_certificate(str(keys_dir / name))
        assert len(public) == 40 and secret and len(secret) == 40
    again = subprocess.run(sentistream_cmd("keys", "--dir", str(keys_dir)), capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "--force" in again.stderr  # never overwrites keys silently


def test_loopback_helpers():
    assert all(map(is_loopback_host, ["127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"]))
    assert not any(map(is_loopback_host, ["0.0.0.0", "*", "::", "eth0", "10.0.0.1", "example.org", ""]))
    assert is_local_address("ipc:///tmp/x.sock") and is_local_address("tcp://127.0.0.1:5557")
    assert not is_local_address("tcp://0.0.0.0:5557") and not is_local_address("tcp://*:5557")


def test_every_socket_binds_loopback_by_default():
    for transport in ("ipc", "tcp"):
        cfg = load_config(overrides={"transport": {"transport": transport}})
        assert cfg.transport.bind_host == "127.0.0.1" and not cfg.transport.uses_curve()
        sup = Supervisor(standard_pipeline(cfg), cfg)
        try:
            addresses = [sup.control_address, sup.command_address, sup.events_address]
            addresses += [sp.spec.output_address for sp in sup.stages.values() if sp.spec.output_address]
            for a in addresses:
                assert a.startswith("tcp://127.0.0.1:") or (transport == "ipc" and a.startswith("ipc://")), a
            if transport == "ipc":  # ipc sockets live in a directory only this user can enter
                assert stat.S_IMODE(os.stat(sup.run_dir).st_mode) == 0o700
        finally:
            os.rmdir(sup.run_dir)


def _config(tmp_path, body: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(body)
    return p


@pytest.mark.parametrize(
    "body",
    [
        '[transport]\ntransport = "tcp"\nbind_host = "0.0.0.0"\n',
        '[transport]\ntransport = "tcp"\nbind_host = "192.168.1.10"\n',
        '[transport]\nevents_address = "tcp://0.0.0.0:5557"\n',
        "[transport]\ncurve = true\n",
    ],
)
def test_non_loopback_without_keys_is_refused_naming_the_key(tmp_path, body):
    conf = _config(tmp_path, body)
    with pytest.raises(ConfigError, match=r"^transport\.curve_keys_dir: .*sentistream keys"):
        load_config(conf)
    for cmd in (("config", "--config", str(conf)), ("run", "--source", "demo", "--config", str(conf))):
        proc = subprocess.run(sentistream_cmd(*cmd), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: transport.curve_keys_dir"), proc.stderr


def test_non_loopback_with_keys_is_accepted_and_uses_curve(tmp_path, keys_dir):
    # only validated, never bound
    cfg = load_config(
        _config(tmp_path, f'[transport]\ntransport = "tcp"\nbind_host = "0.0.0.0"\ncurve_keys_dir = "{keys_dir}"\n')
    )
    assert cfg.transport.uses_curve()
    empty = tmp_path / "nokeys"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"transport\.curve_keys_dir: .* lacks server\.key_secret"):
        load_config(_config(tmp_path, f'[transport]\ncurve = true\ncurve_keys_dir = "{empty}"\n'))


def _listening_addresses(pids: list[int], with_port: bool = False) -> list[str]:
    """Local addresses (``host:port`` with ``with_port``) of the TCP sockets these processes
    listen on (from /proc)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    out = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                addr, port = f[1].split(":")
                if width == 8:
                    host = ".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0))
                else:
                    host = "v6:" + addr
                out.append(f"{host}:{int(port, 16)}" if with_port else host)
    return out


def _sub(address: str, keys: tuple[bytes, bytes, bytes] | None, topic: bytes = b"events") -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        public, secret, server = keys
        s.setsockopt(zmq.CURVE_PUBLICKEY, public)
        s.setsockopt(zmq.CURVE_SECRETKEY, secret)
        s.setsockopt(zmq.CURVE_SERVERKEY, server)
    s.setsockopt(zmq.SUBSCRIBE, topic)
    s.connect(address)
    return s


def _got_any(sock: zmq.Socket, seconds: float) -> int:
    n, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sock.poll(100):
            decode(sock.recv_multipart())
            n += 1
    return n


@pytest.mark.slow
def test_curve_run_refuses_peers_without_the_right_keys(tmp_path, keys_dir):
    out = tmp_path / "events.jsonl"
    conf = _config(tmp_path, f'[transport]\ntransport = "tcp"\ncurve = true\ncurve_keys_dir = "{keys_dir}"\n')
    events_address = f"tcp://127.0.0.1:{free_tcp_port()}"
    proc = subprocess.Popen(
        sentistream_cmd(
            "run",
            "--source",
            "demo",
            "--loop",
            "--duration",
            "300",
            "--config",
            str(conf),
            "--events",
            events_address,
            "--jsonl",
            str(out),
            "--view",
            "none",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    socks = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and (not out.exists() or len(read_jsonl(out)) < 4):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        assert len(read_jsonl(out)) >= 4, "the CURVE graph produced no events"
        # every listening socket of the whole process tree is on 127.0.0.1
        tree = [proc.pid, *descendants(proc.pid)]
        listening = _listening_addresses(tree)
        assert len(listening) >= 8, listening  # control, command, 5 stage outputs, events
        assert set(listening) == {"127.0.0.1"}, listening
        # the media stage's output address: the one TCP socket it listens on (its PUB)
        (media,) = stage_pids(proc.pid, "media")
        (media_listen,) = _listening_addresses([media], with_port=True)
        media_out = f"tcp://{media_listen}"
        server_public, _ = zmq.auth.load_certificate(str(keys_dir / "server.key"))
        client_public, client_secret = zmq.auth.load_certificate(str(keys_dir / "client.key_secret"))
        stranger_public, stranger_secret = zmq.curve_keypair()  # a valid key pair the engine does not admit
        wrong_server_public, _ = zmq.curve_keypair()
        peers = {
            "plain": _sub(events_address, None),
            "plain_media": _sub(media_out, None, b"audio"),
            "unknown_client_key": _sub(events_address, (stranger_public, stranger_secret, server_public)),
            "wrong_server_key": _sub(events_address, (client_public, client_secret, wrong_server_public)),
            "admitted": _sub(events_address, (client_public, client_secret, server_public)),
            "admitted_media": _sub(media_out, (client_public, client_secret, server_public), b"audio"),
        }
        socks = list(peers.values())
        time.sleep(0.5)
        got = {name: _got_any(s, 4.0) for name, s in peers.items()}
        # meanwhile the graph kept going
        assert proc.poll() is None
    finally:
        for s in socks:
            s.close(linger=0)
        interrupt_and_reap(proc)
    assert got["plain"] == got["plain_media"] == 0, got
    assert got["unknown_client_key"] == 0 and got["wrong_server_key"] == 0, got
    assert got["admitted"] >= 8 and got["admitted_media"] >= 20, got  # 4 events/s, 10 audio chunks/s
    assert proc.returncode == 0


# ---- nothing from a socket is unpickled or evaluated -------------------------------------------------

FORBIDDEN_NAMES = {
    "pickle",
    "cPickle",
    "_pickle",
    "marshal",
    "shelve",
    "dill",
    "jsonpickle",
    "cloudpickle",
    "recv_pyobj",
    "send_pyobj",
    "recv_serialized",
    "literal_eval",
}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}  # the builtins, not methods such as model.eval()


def _socket_modules() -> list[Path]:
    """The whole engine (its stages handle what arrived on a socket), and every other module
    of the package that touches a socket (ZeroMQ, WebSocket or plain)."""
    out = []
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO).parts
        if rel[0] in (".venv", "tests", "build") or "site-packages" in rel:
            continue
        text = path.read_text(errors="replace")
        if rel[0] == "engine" or re.search(
            r"\bimport zmq\b|\bfrom zmq\b|\bwebsockets?\b|\bimport socket\b|\brecv", text
        ):
            out.append(path)
    return out


def _violations(path: Path) -> list[str]:
    toks = [
        t
        for t in tokenize.generate_tokens(path.open().readline)
        if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.STRING)
    ]
    bad = []
    for i, t in enumerate(toks):
        prev = toks[i - 1].string if i else ""
        nxt = toks[i + 1].string if i + 1 < len(toks) else ""
        if t.type != tokenize.NAME:
            continue
        if t.string in FORBIDDEN_NAMES:
            bad.append(f"{path.name}:{t.start[0]} {t.string}")
        elif t.string in FORBIDDEN_CALLS and prev != "." and nxt == "(":
            bad.append(f"{path.name}:{t.start[0]} {t.string}()")
        elif t.string == "allow_pickle" and nxt == "=" and toks[i + 2].string == "True":
            bad.append(f"{path.name}:{t.start[0]} allow_pickle=True")
        elif t.string == "load" and prev == "." and i >= 2 and toks[i - 2].string in ("torch", "yaml"):
            bad.append(f"{path.name}:{t.start[0]} {toks[i - 2].string}.load")
    return bad


def test_nothing_that_crosses_a_socket_is_unpickled_or_evaluated():
    modules = _socket_modules()
    names = {p.relative_to(REPO).as_posix() for p in modules}
    assert {"engine/messages.py", "engine/stage.py", "engine/supervisor.py", "engine/stages/fusion.py"} <= names
    bad = [v for p in modules for v in _violations(p)]
    assert not bad, bad
