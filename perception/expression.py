"""Facial expression from a face crop: 7 FER2013 classes and a valence score.

The model is the ``fer`` package's mini-Xception (64x64 grayscale crop, FER2013's 7 classes;
MIT licence, Justin Shenk), bundled as ``models/affect/fer_mini_xception.tflite`` (93 KB) and run
with ``ai-edge-litert`` (TensorFlow Lite's runtime, Apache-2.0). Any TFLite model with the same
input / output shapes can be named instead (``[face] expression_model``).

Valence = P(happy) - (P(angry) + P(disgust) + P(fear) + P(sad)), in [-1, 1]; surprise and
neutral count as neither (surprise is ambiguous in valence): the mapping the affect benchmark
scores with (../shared/data/affect/README.md).
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger("sentistream.expression")

EXPRESSIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # FER2013's order
NEGATIVE = ("angry", "disgust", "fear", "sad")
INPUT_SIDE = 64
_NEG_IDX = [EXPRESSIONS.index(e) for e in NEGATIVE]
_HAPPY = EXPRESSIONS.index("happy")


class ExpressionUnavailable(RuntimeError):
    """The expression model or its runtime cannot be loaded (the face stage goes on without it)."""


def default_model_path() -> Path:
    return Path(str(resources.files("sentistream.models").joinpath("affect/fer_mini_xception.tflite")))


def valence(probs: np.ndarray) -> np.ndarray:
    """P(happy) - sum of the negative classes' probabilities, per row (or for one vector)."""
    p = np.asarray(probs, np.float64)
    return p[..., _HAPPY] - p[..., _NEG_IDX].sum(-1)


def face_crop(gray: np.ndarray, bbox: tuple[float, float, float, float], margin: float = 0.0) -> np.ndarray | None:
    """A square 64x64 crop around ``bbox`` (x0, y0, x1, y1 in ``gray``'s pixels), widened by
    ``margin`` of its side on each edge; None if empty. Margin 0 (the face mesh's box, squared)
    was the best of -0.1 ... 0.35 on 1,200 FER2013 *train* images (valence AUC 0.930 vs 0.919 at
    0.15 and 0.814 at 0.35)."""
    x0, y0, x1, y1 = bbox
    side = max(x1 - x0, y1 - y0) * (1.0 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    h, w = gray.shape[:2]
    a, b = round(cx - side / 2), round(cy - side / 2)
    c, d = round(cx + side / 2), round(cy + side / 2)
    pad = max(0, -a, -b, c - w, d - h)
    if pad:  # the face touches the border: pad with edge pixels rather than squash it
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        a, b, c, d = a + pad, b + pad, c + pad, d + pad
    crop = gray[b:d, a:c]
    if crop.size == 0:
        return None
    return cv2.resize(crop, (INPUT_SIDE, INPUT_SIDE), interpolation=cv2.INTER_AREA)


class ExpressionModel:
    """``predict(crops)`` -> probabilities [N, 7] for 64x64 uint8 grayscale crops."""

    def __init__(self, path: str | Path | None = None, threads: int = 1) -> None:
        self.path = Path(path) if path else default_model_path()
        if not self.path.is_file():
            raise ExpressionUnavailable(f"no expression model at {self.path} (face.expression_model)")
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise ExpressionUnavailable(
                f"ai-edge-litert is not installed ({exc}): pip install ai-edge-litert"
            ) from None
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=max(1, int(threads)))
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise ExpressionUnavailable(f"cannot load the expression model {self.path}: {exc}") from None
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        if tuple(inp["shape"][1:]) != (INPUT_SIDE, INPUT_SIDE, 1) or int(out["shape"][-1]) != len(EXPRESSIONS):
            raise ExpressionUnavailable(
                f"{self.path}: expects input [1, 64, 64, 1] and 7 outputs, has {list(inp['shape'])} -> "
                f"{list(out['shape'])}"
            )
        self._in, self._out = inp["index"], out["index"]

    def predict(self, crops: np.ndarray) -> np.ndarray:
        x = np.asarray(crops, np.float32).reshape(-1, INPUT_SIDE, INPUT_SIDE, 1)
        x = (x / 255.0 - 0.5) * 2.0  # the model's own input scaling ([-1, 1])
        out = np.empty((x.shape[0], len(EXPRESSIONS)), np.float32)
        for i in range(x.shape[0]):  # the graph has batch 1
            self.interpreter.set_tensor(self._in, x[i : i + 1])
            self.interpreter.invoke()
            out[i] = self.interpreter.get_tensor(self._out)[0]
        return out


def load_expression_model(path: str = "", threads: int = 1) -> ExpressionModel | None:
    """The configured model, or None ("none", or it cannot load: logged once, the face stage goes on)."""
    if path == "none":
        return None
    try:
        return ExpressionModel(path or None, threads)
    except ExpressionUnavailable as exc:
        log.warning("face expression off: %s", exc)
        return None
