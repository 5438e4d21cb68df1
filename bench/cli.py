"""`sentistream bench ...`: the benchmark sub-commands.

Each module in BENCH_MODULES exposes ``register(bench_subparsers)`` and adds its own
sub-sub-command (``sentistream bench latency``, ``... throughput``, ...), importing heavy
libraries only inside its command function. Modules that do not exist (yet) are skipped.
See bench/README.md for what each bench measures and its exact command.
"""

from __future__ import annotations

import importlib
import importlib.util

BENCH_MODULES: list[str] = [
    "sentistream.bench.latency",
    "sentistream.bench.throughput",
    "sentistream.bench.soak",
    "sentistream.bench.perception",
    "sentistream.bench.accuracy",
]


def available_modules() -> list[str]:
    out = []
    for name in BENCH_MODULES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None:
            out.append(name)
    return out


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (results go to bench/results/)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    for name in available_modules():
        module = importlib.import_module(name)
        if hasattr(module, "register"):
            module.register(bench_sub)
