"""A pipeline is a list of stage definitions joined by named streams."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageDef:
    name: str  # unique within the pipeline
    kind: str  # a key of sentistream.engine.worker.STAGE_KINDS
    inputs: tuple[str, ...] = ()  # streams consumed
    outputs: tuple[str, ...] = ()  # streams published
    is_source: bool = False
    params: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Pipeline:
    name: str
    stages: tuple[StageDef, ...]

    def producers(self) -> dict[str, str]:
        """stream -> name of the stage that publishes it (each stream has one producer)."""
        out: dict[str, str] = {}
        for s in self.stages:
            for stream in s.outputs:
                if stream in out:
                    raise ValueError(f"stream {stream!r} is published by both {out[stream]} and {s.name}")
                out[stream] = s.name
        return out

    def validate(self) -> None:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stage names in pipeline {self.name}")
        producers = self.producers()
        for s in self.stages:
            for stream in s.inputs:
                if stream not in producers:
                    raise ValueError(f"stage {s.name} consumes {stream!r}, which no stage publishes")
