"""Face stage: video frames -> mediapipe face mesh -> a face feature vector per frame."""

from __future__ import annotations

import numpy as np

from ...payloads import FacePayload
from ...perception.expression import valence
from ..messages import Message
from ..stage import Stage


class FaceStage(Stage):
    def setup(self) -> None:
        from ...perception.face import FaceFeatureExtractor

        self.extractor = FaceFeatureExtractor(self.config.face)
        self.last_t = -1.0

    def on_message(self, msg: Message) -> None:
        if msg.kind != "video_frame" or not msg.arrays:
            return
        if msg.t_media_s < self.last_t:  # the source restarted or looped: no deltas across it
            self.extractor.reset()
        self.last_t = msg.t_media_s
        result = self.extractor.extract(msg.arrays[0])
        self.publish(
            Message(
                "face_features",
                "face",
                0,
                msg.t_capture_ns,
                msg.t_media_s,
                [np.asarray(result.features, dtype=np.float32)],
                meta=_payload(result).to_meta(),
                trace=dict(msg.trace),
            )
        )

    def teardown(self) -> None:
        ex = getattr(self, "extractor", None)
        if ex is not None:
            ex.close()


def _payload(result) -> FacePayload:
    if result.expression is None:
        return FacePayload(bool(result.present), result.reason or "")
    return FacePayload(True, result.reason or "", float(valence(result.expression)), result.expression.tolist())
