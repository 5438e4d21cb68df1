"""Process entry point for one stage: `python -m sentistream.engine.worker NAME [--spec-file PATH]`.

The supervisor starts every stage this way, so each runs in its own OS process with its own
interpreter; a test can start a single stage the same way. The spec (which holds the whole run
configuration) is read from standard input, one JSON line, or from ``--spec-file`` (a file in the
private run directory), never from the command line: `ps` shows only the stage's name.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

from .stage import Stage, StageSpec

# stage kind -> "module:Class" (imported lazily: a face stage never loads Whisper)
STAGE_KINDS: dict[str, str] = {
    "file_source": "sentistream.engine.stages.sources:FileSource",
    "camera_source": "sentistream.engine.stages.sources:CameraSource",
    "microphone_source": "sentistream.engine.stages.sources:MicrophoneSource",
    "face": "sentistream.engine.stages.face:FaceStage",
    "audio_features": "sentistream.engine.stages.audio_features:AudioFeatureStage",
    "asr": "sentistream.engine.stages.asr:AsrStage",
    "fusion": "sentistream.engine.stages.fusion:FusionStage",
    "sink": "sentistream.engine.stages.sink:SinkStage",
}


def stage_class(kind: str) -> type[Stage]:
    try:
        target = STAGE_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown stage kind {kind!r} (known: {', '.join(sorted(STAGE_KINDS))})") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


USAGE = "usage: python -m sentistream.engine.worker NAME [--spec-file PATH]  (spec JSON on stdin without one)"


def read_spec(argv: list[str]) -> StageSpec:
    """The spec named by argv (``NAME`` [``--spec-file PATH``]); ValueError with the reason."""
    if len(argv) not in (1, 3) or (len(argv) == 3 and argv[1] != "--spec-file"):
        raise ValueError(USAGE)
    text = Path(argv[2]).read_text() if len(argv) == 3 else sys.stdin.readline()
    if not text.strip():
        raise ValueError(f"{USAGE}: no spec was given")
    try:
        spec = StageSpec.from_json(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a stage spec: {exc}") from None
    if spec.name != argv[0]:
        raise ValueError(f"the spec is stage {spec.name!r}, not {argv[0]!r}")
    return spec


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        spec = read_spec(argv)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    level = os.environ.get("SENTISTREAM_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level, format=f"%(asctime)s {spec.name}[%(process)d] %(levelname)s %(message)s")
    if os.environ.get("SENTISTREAM_PARENT_PID") and str(os.getppid()) != os.environ["SENTISTREAM_PARENT_PID"]:
        return 1  # the supervisor died before we got here
    nice = int(spec.params.nice or 0)
    if nice > 0:
        try:
            os.nice(nice)  # a background stage (ASR) yields the CPU to the latency-critical ones
        except OSError as exc:
            logging.getLogger("sentistream.worker").warning("%s: could not lower priority: %s", spec.name, exc)
    stage = stage_class(spec.kind)(spec)
    if os.environ.get("SENTISTREAM_FORWARD_LOGS") == "1":  # our output goes to the stage log
        stage.forward_logs(logging.WARNING)
    return stage.run()


if __name__ == "__main__":
    sys.exit(main())
