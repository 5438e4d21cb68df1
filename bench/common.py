"""Shared helpers of the benches: the environment stamp, percentiles, result files."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..provenance import cpu_name, git_commit, gpu_info, package_versions, stamp  # noqa: F401  (bench API)

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def show_bench_progress() -> None:
    """INFO lines from sentistream.bench (a benchmark's progress), also when it is called directly
    rather than through the CLI, which sets up logging itself."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("sentistream.bench").setLevel(logging.INFO)


def device_tag(device: str) -> str:
    """File-name tag: "cpu", or the GPU's name as a slug (nvidia-h100-80gb-hbm3)."""
    if device.startswith("cuda"):
        name = gpu_info().get("gpu", "cuda")
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cuda"
    return "cpu"


def command_line(default: str) -> str:
    argv = sys.argv[1:]
    return "sentistream " + " ".join(argv) if argv else default


def pct(values: Iterable[float], q: float) -> float | None:
    a = np.asarray(list(values), dtype=float)
    return round(float(np.percentile(a, q)), 3) if a.size else None


def summary(values: Iterable[float]) -> dict[str, Any]:
    a = np.asarray(list(values), dtype=float)
    if not a.size:
        return {"n": 0}
    return {
        "n": int(a.size),
        "p50": pct(a, 50),
        "p90": pct(a, 90),
        "p99": pct(a, 99),
        "mean": round(float(a.mean()), 3),
        "min": round(float(a.min()), 3),
        "max": round(float(a.max()), 3),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data.setdefault("stamp", {})["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


class Timer:
    def __enter__(self) -> Timer:
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self.t
