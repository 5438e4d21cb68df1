"""Process entry point for one stage: `python -m sentistream.engine.worker SPEC_JSON`.

The supervisor starts every stage this way, so each runs in its own OS
process with its own interpreter; a test can start a single stage the same way.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m sentistream.engine.worker SPEC_JSON", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = StageSpec.from_json(argv[0])
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
    return stage.run()


if __name__ == "__main__":
    sys.exit(main())
