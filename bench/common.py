"""Shared helpers of the benches: the environment stamp, percentiles, result files."""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent

VERSION_PACKAGES = ("torch", "onnxruntime", "onnx", "numpy", "pyzmq", "faster-whisper", "ctranslate2",
                    "transformers", "mediapipe", "torch-tensorrt", "tensorrt")


def show_bench_progress() -> None:
    """INFO lines from sentistream.bench (a benchmark's progress), also when it is called directly
    rather than through the CLI, which sets up logging itself."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("sentistream.bench").setLevel(logging.INFO)


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
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
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
        r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=10)
        if r.returncode == 0:
            return r.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def device_tag(device: str) -> str:
    """File-name tag: "cpu", or the GPU's name as a slug (nvidia-h100-80gb-hbm3)."""
    if device.startswith("cuda"):
        name = gpu_info().get("gpu", "cuda")
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cuda"
    return "cpu"


def stamp(device: str, command: str, smoke: bool) -> dict[str, Any]:
    """Where, when and how a result was measured."""
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
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


def command_line(default: str) -> str:
    argv = sys.argv[1:]
    return "sentistream " + " ".join(argv) if argv else default


def pct(values: Iterable[float], q: float) -> Optional[float]:
    a = np.asarray(list(values), dtype=float)
    return round(float(np.percentile(a, q)), 3) if a.size else None


def summary(values: Iterable[float]) -> dict[str, Any]:
    a = np.asarray(list(values), dtype=float)
    if not a.size:
        return {"n": 0}
    return {"n": int(a.size), "p50": pct(a, 50), "p90": pct(a, 90), "p99": pct(a, 99),
            "mean": round(float(a.mean()), 3), "min": round(float(a.min()), 3), "max": round(float(a.max()), 3)}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data.setdefault("stamp", {})["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


class Timer:
    def __enter__(self) -> "Timer":
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self.t
