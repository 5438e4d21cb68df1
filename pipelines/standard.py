"""The standard live graph.

    media file / camera ──video──▶ face ──face──────────┐
            │                                          ▼
    media file / mic ──audio──▶ audio_features ──audio_feat──▶ fusion ──events──▶ sink
                          └───▶ asr ──words────────────┘           └──▶ PUB for agents / dashboard
"""

from __future__ import annotations

from sentistream.engine.config import EngineConfig
from sentistream.pipelines.definition import Pipeline, StageDef


def standard_pipeline(config: EngineConfig) -> Pipeline:
    src = config.source
    stages: list[StageDef] = []
    has_video = has_audio = False
    if src.kind in ("demo", "file"):
        stages.append(StageDef("media", "file_source", outputs=("video", "audio"), is_source=True))
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
        stages.append(StageDef("asr", "asr", inputs=("audio",), outputs=("words",),
                               params={"nice": config.supervisor.asr_nice}))
        fusion_inputs += ["audio_feat", "words"]
    stages.append(StageDef("fusion", "fusion", inputs=tuple(fusion_inputs), outputs=("events",)))
    stages.append(StageDef("sink", "sink", inputs=("events",)))
    pipeline = Pipeline("standard", tuple(stages))
    pipeline.validate()
    return pipeline
