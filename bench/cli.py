"""`sentistream bench ...`: the benchmark sub-commands.

Each bench module exposes ``register(bench_subparsers)`` and adds its own sub-sub-command
(``sentistream bench latency``, ``... throughput``, ...), importing heavy libraries only inside its
command function. See bench/README.md for what each bench measures and its exact command.
"""

from __future__ import annotations

from typing import Any


def bench_modules() -> list[Any]:
    from . import accuracy, affect, latency, perception, scaleout, soak, stream, throughput

    return [latency, throughput, soak, perception, accuracy, affect, stream, scaleout]


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (results go to bench/results/)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    for module in bench_modules():
        module.register(bench_sub)
