"""A quiet terminal: native libraries' lines go to the run's stage log, not between the events
or over the live panel; stage command lines carry no configuration."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import REPO, interrupt_and_reap, sentistream_cmd

# What mediapipe (glog / absl) and TensorFlow Lite print on fd 2 inside the face stage.
NATIVE_NOISE = re.compile(r"XNNPACK|^W0000|^I0000|landmark_projection|inference_feedback_manager|absl::", re.M)


def _stage_log(stderr: str) -> Path:
    m = re.search(r"stage output \(native libraries included\): (\S+)", stderr)
    assert m, stderr[-2000:]
    return Path(m.group(1))


def test_native_lines_go_to_the_stage_log_and_the_summary_names_it():
    proc = subprocess.run(
        sentistream_cmd("run", "--source", "demo", "--duration", "4", "--view", "lines"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not NATIVE_NOISE.search(proc.stdout + proc.stderr), proc.stderr[-3000:]
    log = _stage_log(proc.stderr)
    text = log.read_text()
    assert NATIVE_NOISE.search(text), text[-2000:]  # the face stage's native lines are all there
    assert oct(log.parent.stat().st_mode & 0o777) == "0o700"  # the private run directory
    assert sorted(p.name for p in log.parent.iterdir()) == ["stages.log"]  # sockets are gone
    # the events are all on stdout, nothing else between them
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines[0].startswith("events on ") and all(line.startswith("[") for line in lines[1:]), lines[:5]


def test_verbose_puts_the_stages_own_output_on_the_terminal():
    proc = subprocess.run(
        sentistream_cmd("-v", "run", "--source", "demo", "--duration", "2", "--view", "none"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert NATIVE_NOISE.search(proc.stderr), proc.stderr[-3000:]
    assert "stage output (native libraries included)" not in proc.stderr


def _worker_cmdlines(parent: int) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"sentistream.engine.worker" in cmdline:
            out.append(" ".join(part.decode() for part in cmdline if part))
    return out


def test_stage_command_lines_hold_no_config():
    proc = subprocess.Popen(
        sentistream_cmd("run", "--source", "demo", "--duration", "30", "--view", "none"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        cmdlines: list[str] = []
        while time.monotonic() < deadline and len(cmdlines) < 6:
            cmdlines = _worker_cmdlines(proc.pid)
            time.sleep(0.2)
        assert len(cmdlines) == 6, cmdlines  # media, face, audio_features, asr, fusion, sink
        for line in cmdlines:
            assert "{" not in line and "config" not in line and len(line) < 200, line
            assert line.split()[-1] in {"media", "face", "audio_features", "asr", "fusion", "sink"}, line
    finally:
        interrupt_and_reap(proc)


# --------------------------------------------------------------------------- the live panel
def _run_in_pty(args: list[str], cols: int, rows: int, timeout: float) -> bytes:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the engine on a 160x45 terminal
        os.environ["TERM"] = "xterm-256color"
        os.environ.pop("NO_COLOR", None)
        os.execv(sys.executable, [sys.executable, "-m", "sentistream.cli", *args])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
    return bytes(out)


def test_live_view_draws_one_panel_in_a_terminal():
    pyte = pytest.importorskip("pyte")
    cols, rows = 160, 45
    raw = _run_in_pty(["run", "--source", "demo", "--duration", "8", "--view", "live"], cols, rows, timeout=240)
    (REPO / "test-artifacts").mkdir(exist_ok=True)
    (REPO / "test-artifacts" / "live_view.pty").write_bytes(raw)
    screen = pyte.HistoryScreen(cols, rows, history=2000)
    stream = pyte.ByteStream(screen)
    stream.feed(raw)
    history = ["".join(ch.data for ch in line.values()) for line in screen.history.top]
    lines = history + list(screen.display)
    text = "\n".join(lines)
    assert "events;" in text, text[-3000:]  # the run ended with its summary
    tops = [i for i, line in enumerate(lines) if re.search(r"╭─+ sentistream ─+╮", line)]
    assert len(tops) == 1, "\n".join(lines[: max(tops, default=0) + 5])  # one panel, never a second copy
    assert not NATIVE_NOISE.search(text), text
    above = [line for line in lines[: tops[0]] if line.strip()]
    assert above == [], above  # nothing stray above the panel
