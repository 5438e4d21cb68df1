"""Shared fixtures: real processes, real sockets, real media."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"


def sentistream_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sentistream.cli", *args]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def interrupt_and_reap(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGINT a still-running graph (its orderly shutdown), SIGKILL it if that takes over timeout s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def demo_meta() -> dict:
    return json.loads((REPO / "assets" / "demo.json").read_text())


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
