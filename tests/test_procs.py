"""bench.procs on a real process tree: a parent that starts a "stage" child the way the supervisor
does (`... -m sentistream.engine.worker NAME`, the spec on its stdin) and a grandchild in its own session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from sentistream.bench.procs import cmdline, descendants, memory_kb, pid_alive, stage_name, stage_pids

PARENT = r"""
import subprocess, sys, time
sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
stage = subprocess.Popen([*sleep, "-m", "sentistream.engine.worker", "fusion"])
other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(stage.pid, other.pid, flush=True)
time.sleep(60)
"""


def test_tree_stage_names_memory_and_zombies():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        stage, other = map(int, parent.stdout.readline().split())
        tree = descendants(parent.pid)
        assert set(tree) == {stage, other}, tree  # its own session still counts
        assert stage_name(stage) == "fusion"  # the name after the worker module
        assert stage_name(other) is None and stage_name(parent.pid) is None
        assert stage_pids(parent.pid, "fusion") == [stage] and stage_pids(parent.pid, "asr") == []
        assert cmdline(stage).split("\0")[-2] == "fusion" and "{" not in cmdline(stage)
        mem = memory_kb(stage)
        assert 0 < mem["VmRSS"] <= mem["VmHWM"], mem
        # killed but not yet reaped by its parent: a zombie, left behind, no longer alive
        os.kill(stage, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(stage) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not pid_alive(stage)
        assert stage in descendants(parent.pid)
        assert memory_kb(stage) == {} or "VmRSS" not in memory_kb(stage)
        assert stage_name(stage) is None
    finally:
        for pid in descendants(parent.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        parent.kill()
        parent.wait()
    assert not pid_alive(parent.pid)
    assert cmdline(parent.pid) == "" and memory_kb(parent.pid) == {}
