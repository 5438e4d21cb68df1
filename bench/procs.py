"""A running graph's processes as Linux shows them in /proc: the soak bench and the process tests
find stages, read their memory and check that nothing is left behind through these."""

from __future__ import annotations

import os
from pathlib import Path

_WORKER = "sentistream.engine.worker"


def descendants(pid: int) -> list[int]:
    """All descendants of pid, in their own sessions too; zombies count (a zombie is left behind)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited while we looked
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])  # after "(comm)": state, ppid
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    """pid's command line ("" once it has gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def stage_name(pid: int) -> str | None:
    """The stage a graph process runs (``python -m sentistream.engine.worker NAME``); None for a
    process that is no stage (the supervisor) or has gone."""
    argv = cmdline(pid).split("\0")
    if _WORKER in argv and argv.index(_WORKER) + 1 < len(argv):
        return argv[argv.index(_WORKER) + 1] or None
    return None


def stage_pids(root: int, stage: str) -> list[int]:
    """The processes under root that run the stage named stage (a restarted one appears beside the
    old one until that has exited)."""
    return [pid for pid in descendants(root) if stage_name(pid) == stage]


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of pid in KiB; {} once it has gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    except OSError:
        pass
    return out
