"""Where, when and how a result was made: machine, GPU, package versions, git commit. Stamped on
every benchmark result and on every trained model's metadata."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent

VERSION_PACKAGES = (
    "torch",
    "onnxruntime",
    "onnx",
    "numpy",
    "pyzmq",
    "faster-whisper",
    "ctranslate2",
    "transformers",
    "mediapipe",
    "torch-tensorrt",
    "tensorrt",
)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> dict[str, Any]:
    """GPU name, driver and CUDA versions (empty when no CUDA device is visible)."""
    out: dict[str, Any] = {}
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
            out["cuda_runtime"] = torch.version.cuda
            out["gpu_count"] = torch.cuda.device_count()
    except Exception:  # pragma: no cover - a broken CUDA install
        pass
    try:
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if q.returncode == 0 and q.stdout.strip():
            name, driver, mem = [x.strip() for x in q.stdout.strip().splitlines()[0].split(",")]
            out.setdefault("gpu", name)
            out["driver"] = driver
            out["gpu_memory"] = mem
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return out


def package_versions(names: Iterable[str] = VERSION_PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str:
    try:
        r = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True, timeout=10
        )
        if r.returncode == 0:
            return r.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def stamp(device: str, command: str, smoke: bool) -> dict[str, Any]:
    """Where, when and how a result was measured."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "smoke": smoke,
        "device": device,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        **gpu_info(),
        "platform": platform.platform(),
        "versions": package_versions(),
        "git": git_commit(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
