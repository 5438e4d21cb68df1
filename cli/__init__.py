"""The `sentistream` command line: `run` and `config` here, every other command in its own
module of this package (extract, serve, keys, train) or beside what it drives (doctor, bench)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded at run time

log = logging.getLogger("sentistream")


def _registrars() -> list[Callable[[Any], None]]:
    """Each adds its sub-command(s) to the parser; command modules import heavy libraries only
    inside their command functions, so `sentistream --help` stays fast."""
    from ..bench import cli as bench_cli
    from ..engine import doctor
    from . import extract, keys, serve, train

    return [
        extract.register_extract,  # sentistream extract
        doctor.register,  # sentistream doctor
        serve.register_serve,  # sentistream serve (fusion server)
        serve.register_serve_asr,  # sentistream serve-asr (Whisper server)
        bench_cli.register,  # sentistream bench <latency|throughput|soak|perception|accuracy>
        keys.register_keys,  # sentistream keys (CURVE key pairs)
        train.register,  # sentistream train / train-live / train-text
    ]


class _StderrHandler(logging.StreamHandler):
    """Writes to the *current* sys.stderr, so that while the live view runs (rich redirects
    sys.stderr) a log line is printed above the panel instead of breaking it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _parse_source(value: str) -> dict[str, Any]:
    """demo | webcam[:N] | file:PATH | PATH | none  ->  [source] overrides."""
    if value == "demo":
        return {"kind": "demo"}
    if value == "none":
        return {"kind": "none"}
    if value == "webcam" or value.startswith("webcam:"):
        index = value.partition(":")[2] or "0"
        if not index.isdigit():
            raise SystemExit(f"error: --source {value}: the camera index must be a number (e.g. webcam:0)")
        return {"kind": "webcam", "camera_index": int(index)}
    path = value[5:] if value.startswith("file:") else value
    return {"kind": "file", "path": str(Path(path).expanduser().resolve())}


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    source: dict[str, Any] = {}
    if args.source:
        source.update(_parse_source(args.source))
    if args.mic is not None:
        source["microphone"] = args.mic
    if args.duration is not None:
        source["duration_s"] = float(args.duration)
    if args.pace:
        source["pace"] = args.pace
    if args.loop:
        source["loop"] = True
    overrides: dict[str, Any] = {}
    if source:
        overrides["source"] = source
    if args.events:
        overrides["transport"] = {"events_address": args.events}
    if args.model:
        overrides["fusion"] = {"model": args.model}
    return overrides


def _preflight_devices(cfg) -> str | None:
    """Fail fast, in one line, when a live device is missing (before any stage starts)."""
    src = cfg.source
    if src.kind == "webcam":
        import cv2

        cap = cv2.VideoCapture(src.camera_index)
        ok = cap.isOpened()
        cap.release()
        if not ok:
            return (
                f"camera {src.camera_index} could not be opened (no /dev/video{src.camera_index} or it is busy); "
                "try --source webcam:N with another index, `sentistream doctor` to list devices, or --source demo"
            )
    if src.microphone:
        try:
            import sounddevice as sd
        except OSError as exc:
            return f"microphone {src.microphone!r}: PortAudio is missing ({exc}); apt-get install libportaudio2"
        device = (
            None
            if src.microphone == "default"
            else (int(src.microphone) if src.microphone.isdigit() else src.microphone)
        )
        try:
            sd.check_input_settings(device=device, channels=1, samplerate=src.sample_rate, dtype="float32")
        except Exception as exc:
            return (
                f"microphone {src.microphone!r} could not be opened: {exc}; "
                "list devices with `sentistream doctor`, pass --mic NAME_OR_INDEX, or use --source demo"
            )
    return None


def cmd_run(args: argparse.Namespace) -> int:
    from ..engine.config import ConfigError, load_config
    from ..engine.supervisor import Supervisor
    from ..engine.view import EventView
    from ..pipelines.standard import standard_pipeline

    try:
        cfg = load_config(args.config, _run_overrides(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = _preflight_devices(cfg)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 3
    if cfg.source.kind == "file" and not Path(cfg.source.path).is_file():
        print(f"error: media file not found: {cfg.source.path}", file=sys.stderr)
        return 2
    try:
        pipeline = standard_pipeline(cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    params = {"sink": {"jsonl": str(Path(args.jsonl).resolve()) if args.jsonl else ""}}
    if args.jsonl:
        Path(args.jsonl).write_text("")  # a fresh file per run; a restarted sink appends
    # -v: the stages' own output (native libraries included) on the terminal, not in the stage log
    stage_output = "terminal" if getattr(args, "verbose", 0) else "log"
    supervisor = Supervisor(pipeline, cfg, params, stage_output=stage_output)
    view = EventView(mode=args.view, events_address=supervisor.events_address)
    dashboard = None
    if args.dashboard is not None:
        import shutil

        from ..engine.dashboard import start_dashboard

        try:
            dashboard = start_dashboard(args.dashboard, supervisor)
        except (ValueError, OSError) as exc:
            shutil.rmtree(supervisor.run_dir, ignore_errors=True)  # nothing was started in it
            print(f"error: dashboard: {exc}", file=sys.stderr)
            return 2
        print(f"dashboard on {dashboard.url}", file=sys.stderr, flush=True)
    try:
        with view:
            on_status = view.on_status if dashboard is None else dashboard.chain(view.on_status)
            result = supervisor.run(on_event=view.on_event, on_status=on_status)
    finally:
        if dashboard is not None:
            dashboard.stop()
    view.summary(result)
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
    return result.exit_code


def cmd_config(args: argparse.Namespace) -> int:
    from ..engine.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(cfg.to_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sentistream", description="Streaming multimodal sentiment engine.")
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log output, and the stages' own output on the terminal (-vv for debug)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the live graph on a source and stream sentiment events")
    run.add_argument("--source", default=None, help="demo | webcam[:N] | file:PATH | PATH | none (default: demo)")
    run.add_argument("--mic", default=None, help="microphone: 'default', a name or an index (live sessions)")
    run.add_argument("--duration", type=float, default=None, help="stop after S seconds of stream time")
    run.add_argument("--jsonl", default=None, help="write every event as a JSON line to FILE")
    run.add_argument("--config", default=None, help="a TOML file overriding configs/default.toml")
    run.add_argument("--pace", choices=["realtime", "fast"], default=None, help="file replay pace")
    run.add_argument("--loop", action="store_true", help="replay the file from the start when it ends")
    run.add_argument("--events", default=None, help="address to publish events on, e.g. tcp://127.0.0.1:5557")
    run.add_argument("--model", default=None, help="fusion model: 'default' or a zoo name")
    run.add_argument(
        "--view",
        choices=["auto", "live", "lines", "none"],
        default="auto",
        help="terminal output (auto: live on a TTY)",
    )
    run.add_argument(
        "--dashboard",
        nargs="?",
        const="",
        default=None,
        metavar="HOST:PORT",
        help="serve a live web dashboard (default 127.0.0.1:8765; other interfaces only when named)",
    )
    run.set_defaults(func=cmd_run)

    conf = sub.add_parser("config", help="print the effective configuration (checks every key)")
    conf.add_argument("--config", default=None)
    conf.set_defaults(func=cmd_config)
    for register in _registrars():
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from .train import PASSTHROUGH_COMMANDS, run_passthrough

    if argv[:1] and argv[0] in PASSTHROUGH_COMMANDS:  # every option is the trainer's own, --help included
        return run_passthrough(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=max(level, logging.DEBUG), handlers=[handler])
    os.environ["SENTISTREAM_LOG_LEVEL"] = logging.getLevelName(max(level, logging.DEBUG))
    return int(args.func(args) or 0)
