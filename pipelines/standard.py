"""The standard live graph.

    media file / camera ──video──▶ face ──face──────────┐
            │                                          ▼
    media file / mic ──audio──▶ audio_features ──audio_feat──▶ fusion ──events──▶ sink
                          └───▶ asr ──words────────────┘           └──▶ PUB for agents / dashboard

With ``source.pace = "fast"`` the media stage also reads the events (flow control, see FileSource).
"""

from __future__ import annotations

from ..engine.config import EngineConfig
from .definition import Pipeline, StageDef


def standard_pipeline(config: EngineConfig) -> Pipeline:
    src = config.source
    stages: list[StageDef] = []
    has_video = has_audio = False
    # A fast file replay runs as fast as its slowest stage: the source reads the events it causes
    # and stays a few seconds ahead of them, and fusion cuts a window once every input is past it.
    fast_replay = src.kind in ("demo", "file") and src.pace == "fast"
    if src.kind in ("demo", "file"):
        stages.append(
            StageDef(
                "media",
                "file_source",
                inputs=("events",) if fast_replay else (),
                outputs=("video", "audio"),
                is_source=True,
            )
        )
        has_video = has_audio = True
    else:
        if src.kind == "webcam":
            stages.append(StageDef("camera", "camera_source", outputs=("video",), is_source=True))
            has_video = True
        if src.microphone:
            stages.append(StageDef("microphone", "microphone_source", outputs=("audio",), is_source=True))
            has_audio = True
    if not (has_video or has_audio):
        raise ValueError("the pipeline needs at least one source: a media file, a camera or a microphone")
    fusion_inputs: list[str] = []
    if has_video:
        stages.append(StageDef("face", "face", inputs=("video",), outputs=("face",)))
        fusion_inputs.append("face")
    if has_audio:
        stages.append(StageDef("audio_features", "audio_features", inputs=("audio",), outputs=("audio_feat",)))
        stages.append(
            StageDef(
                "asr",
                "asr",
                inputs=("audio",),
                outputs=("words", "voice"),
                # In a fast replay every window waits for the words: a niced recogniser starved by
                # the other stages' full-speed work would only hold the whole graph up.
                params={"nice": 0 if fast_replay else config.supervisor.asr_nice},
            )
        )
        fusion_inputs += ["audio_feat", "words", "voice"]
    stages.append(
        StageDef(
            "fusion",
            "fusion",
            inputs=tuple(fusion_inputs),
            outputs=("events",),
            params={"complete_windows": True} if fast_replay else {},
        )
    )
    stages.append(StageDef("sink", "sink", inputs=("events",)))
    pipeline = Pipeline("standard", tuple(stages))
    pipeline.validate()
    return pipeline
