"""Per-frame facial expression features from MediaPipe Face Mesh.

The vector is geometry, not appearance: distances between landmarks measured in
a head-aligned frame and divided by the inter-ocular distance, so it does not
depend on image size, face size or head rotation (to first order). Each entry
approximates a facial action unit (AU) family; a learned fusion model consumes
them. The engine's face stage and the offline `extract` command both call
`FaceFeatureExtractor.extract` frame by frame, so train and serve see the same
numbers.

Sides are the subject's own: "_l" is the subject's left (image right in an
unmirrored camera frame), matching MediaPipe's landmark naming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .expression import face_crop, load_expression_model


@dataclass
class FaceOptions:
    max_num_faces: int = 3
    refine_landmarks: bool = True  # adds the 10 iris landmarks (478 in all) used for gaze
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    static_image_mode: bool = False  # False: track between frames (video), True: detect every frame
    min_face_px: int = 24  # faces smaller than this (shorter bbox side, source pixels) are masked
    min_brightness: float = 8.0  # mean gray level (0..255) below this: frame too dark, masked
    max_side: int = 1280  # frames are downscaled so their longer side is at most this before MediaPipe
    # Facial expression on the face box (perception/expression.py): "" = the bundled FER2013
    # mini-Xception, a path = another TFLite model of the same shape, "none" = off.
    expression_model: str = ""


# Landmark indices (MediaPipe canonical mesh). "R" = subject's right = image left.
_EYE_R_OUTER, _EYE_R_INNER = 33, 133
_EYE_L_OUTER, _EYE_L_INNER = 263, 362
_LID_R = ((159, 145), (158, 153), (160, 144))  # (upper, lower) pairs
_LID_L = ((386, 374), (385, 380), (387, 373))
_BROW_R = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55)
_BROW_L = (300, 293, 334, 296, 336, 276, 283, 282, 295, 285)
_BROW_R_INNER = (107, 55)
_BROW_L_INNER = (336, 285)
_MOUTH_R, _MOUTH_L = 61, 291
_LIP_UPPER_OUTER, _LIP_UPPER_INNER = 0, 13
_LIP_LOWER_INNER, _LIP_LOWER_OUTER = 14, 17
_NOSE_BRIDGE, _SUBNASALE = 168, 2
_ALA_R, _ALA_L = 129, 358
_FOREHEAD, _CHIN = 10, 152
_IRIS_R, _IRIS_L = 468, 473  # present only with refine_landmarks

_EXPRESSION_NAMES: tuple[str, ...] = (
    "brow_raise_l",  # brow centre height above the eye centre (AU1+2 up, AU4 down)
    "brow_raise_r",
    "inner_brow_raise_l",  # inner brow height above the inner eye corner (AU1)
    "inner_brow_raise_r",
    "brow_furrow_gap",  # horizontal gap between the inner brows; smaller = furrowed (AU4)
    "eye_open_l",  # mean upper-to-lower lid gap (AU5 up; AU7/43/45 down)
    "eye_open_r",
    "lower_lid_raise_l",  # lower lid height above the eye-corner line (AU6/7 cheek raise, squint)
    "lower_lid_raise_r",
    "lip_corner_raise_l",  # mouth corner height above the lip midline (AU12 smile up, AU15 down)
    "lip_corner_raise_r",
    "lip_corner_pull_l",  # mouth corner horizontal distance from the facial midline (AU12/20)
    "lip_corner_pull_r",
    "lip_corner_depress",  # mean mouth-corner drop below the subnasale (AU15 up, AU12 down)
    "mouth_open",  # inner-lip gap (AU25)
    "jaw_drop",  # subnasale-to-chin distance (AU26/27)
    "lip_stretch",  # corner-to-corner mouth width (AU20)
    "lip_pucker",  # lip-centre protrusion towards the camera relative to the corners (AU18/22)
    "lip_thickness",  # upper + lower red-lip height; thinner when pressed (AU23/24)
    "upper_lip_raise",  # subnasale-to-upper-lip distance; smaller when raised (AU10)
    "nose_wrinkle",  # nose-ala to inner-eye-corner height; smaller when wrinkled (AU9)
    "gaze_h",  # iris offset from the eye centre, in eye widths, + = towards image right (0 without iris)
    "gaze_v",  # iris offset from the eye centre, in eye widths, + = down (0 without iris)
)
_POSE_NAMES: tuple[str, ...] = (
    "head_yaw",  # radians, + = face normal points towards image right
    "head_pitch",  # radians, + = face tilted up
    "head_roll",  # radians, + = eye line rotated clockwise in the image
)
_STATE_NAMES = _EXPRESSION_NAMES + _POSE_NAMES

FACE_FEATURE_NAMES: tuple[str, ...] = (
    _STATE_NAMES
    # Frame-to-frame change of every expression and pose value; 0 on the first frame and
    # after any frame without a valid face.
    + tuple(f"delta_{n}" for n in _STATE_NAMES)
    + ("face_present",)  # 1.0 with a valid face, else 0.0 (every other entry is then 0)
)
FACE_FEATURE_DIM: int = len(FACE_FEATURE_NAMES)
_N_STATE = len(_STATE_NAMES)
_N_EXPR = len(_EXPRESSION_NAMES)

REASONS = ("ok", "no_face", "too_dark", "too_small", "bad_frame")


@dataclass
class FaceResult:
    features: np.ndarray  # float32 (FACE_FEATURE_DIM,); all zeros unless present
    present: bool
    landmarks: np.ndarray | None  # float32 (478, 3) normalised x, y in [0,1], z ~ x scale; 468 rows without refine
    reason: str  # one of REASONS
    num_faces: int = 0  # faces MediaPipe found (the largest is used)
    bbox: tuple[float, float, float, float] | None = field(default=None)  # x0, y0, x1, y1 in source pixels
    expression: np.ndarray | None = None  # float32 (7,) probabilities in EXPRESSIONS order; None: off / no face


def _masked(reason: str, num_faces: int = 0) -> FaceResult:
    return FaceResult(np.zeros(FACE_FEATURE_DIM, np.float32), False, None, reason, num_faces)


def to_rgb_uint8(frame: object) -> np.ndarray | None:
    """Any plausible image array -> contiguous HxWx3 uint8, or None if it cannot be one.

    Float frames in [0, 1] are scaled to [0, 255]; larger float ranges are clipped.
    Grayscale is replicated; an alpha channel is dropped. Non-finite values -> None.
    """
    try:
        a = np.asarray(frame)
    except Exception:
        return None
    if a.dtype == object or a.size == 0:
        return None
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = a[:, :, None]
    elif a.ndim != 3 or a.shape[2] not in (3, 4):
        return None
    a = a[:, :, :3]
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            return None
        a = a.astype(np.float32)
        if a.max(initial=0.0) <= 1.0 + 1e-6:
            a = a * 255.0
        a = np.clip(a + 0.5, 0, 255).astype(np.uint8)
    elif a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer):
        a = np.clip(a, 0, 255).astype(np.uint8)
    else:
        return None
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else v


def head_frame(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (columns = head x right, y down, z away from camera) and origin.

    Built from rigid points only (eye corners, forehead, subnasale) so that
    expressions, and the jaw in particular, do not move the frame.
    """
    eye_r = 0.5 * (pts[_EYE_R_OUTER] + pts[_EYE_R_INNER])
    eye_l = 0.5 * (pts[_EYE_L_OUTER] + pts[_EYE_L_INNER])
    x = _unit(eye_l - eye_r)
    # Forehead -> subnasale lies at nearly constant depth on a frontal face, unlike -> chin.
    down = pts[_SUBNASALE] - pts[_FOREHEAD]
    y = _unit(down - np.dot(down, x) * x)
    z = np.cross(x, y)
    return np.stack([x, y, z], axis=1), 0.5 * (eye_r + eye_l)


def pose_angles(rot: np.ndarray) -> tuple[float, float, float]:
    """Yaw, pitch, roll (radians) of the head frame relative to the camera."""
    x_axis, n = rot[:, 0], -rot[:, 2]  # n: outward face normal (towards the camera when frontal)
    yaw = math.atan2(float(n[0]), float(-n[2]))
    pitch = math.atan2(float(-n[1]), math.hypot(float(n[0]), float(n[2])))
    roll = math.atan2(float(x_axis[1]), float(x_axis[0]))
    return yaw, pitch, roll


def expression_values(pts: np.ndarray) -> np.ndarray:
    """Expression + pose values (len(_STATE_NAMES)) from isotropic landmark coordinates (N, 3)."""
    rot, origin = head_frame(pts)
    q = (pts - origin) @ rot  # head-aligned: x right, y down, z away from camera
    eye_r = 0.5 * (q[_EYE_R_OUTER] + q[_EYE_R_INNER])
    eye_l = 0.5 * (q[_EYE_L_OUTER] + q[_EYE_L_INNER])
    iod = float(np.linalg.norm(eye_l - eye_r))
    if not math.isfinite(iod) or iod < 1e-6:
        return np.zeros(_N_STATE, np.float64)
    q = q / iod
    eye_r, eye_l = eye_r / iod, eye_l / iod
    X, Y, Z = q[:, 0], q[:, 1], q[:, 2]

    def lid_gap(pairs: tuple[tuple[int, int], ...]) -> float:
        return float(np.mean([Y[lo] - Y[up] for up, lo in pairs]))

    lip_mid_y = 0.5 * (Y[_LIP_UPPER_INNER] + Y[_LIP_LOWER_INNER])
    midline_x = 0.5 * (X[_NOSE_BRIDGE] + X[_SUBNASALE])
    inner_eye_y = 0.5 * (Y[_EYE_R_INNER] + Y[_EYE_L_INNER])
    gaze_h = gaze_v = 0.0
    if len(q) > _IRIS_L:
        offs, widths = [], []
        for iris, outer, inner in ((_IRIS_R, _EYE_R_OUTER, _EYE_R_INNER), (_IRIS_L, _EYE_L_OUTER, _EYE_L_INNER)):
            offs.append(q[iris, :2] - 0.5 * (q[outer, :2] + q[inner, :2]))
            widths.append(abs(X[outer] - X[inner]))
        w = max(float(np.mean(widths)), 1e-6)
        gaze_h, gaze_v = (np.mean(offs, axis=0) / w).tolist()

    vals = [
        eye_l[1] - float(np.mean(Y[list(_BROW_L)])),
        eye_r[1] - float(np.mean(Y[list(_BROW_R)])),
        Y[_EYE_L_INNER] - float(np.mean(Y[list(_BROW_L_INNER)])),
        Y[_EYE_R_INNER] - float(np.mean(Y[list(_BROW_R_INNER)])),
        float(np.mean(X[list(_BROW_L_INNER)]) - np.mean(X[list(_BROW_R_INNER)])),
        lid_gap(_LID_L),
        lid_gap(_LID_R),
        0.5 * (Y[_EYE_L_OUTER] + Y[_EYE_L_INNER]) - Y[_LID_L[0][1]],
        0.5 * (Y[_EYE_R_OUTER] + Y[_EYE_R_INNER]) - Y[_LID_R[0][1]],
        lip_mid_y - Y[_MOUTH_L],
        lip_mid_y - Y[_MOUTH_R],
        X[_MOUTH_L] - midline_x,
        midline_x - X[_MOUTH_R],
        0.5 * (Y[_MOUTH_L] + Y[_MOUTH_R]) - Y[_SUBNASALE],
        float(np.linalg.norm(q[_LIP_LOWER_INNER] - q[_LIP_UPPER_INNER])),
        float(np.linalg.norm(q[_CHIN] - q[_SUBNASALE])),
        float(np.linalg.norm(q[_MOUTH_L] - q[_MOUTH_R])),
        0.5 * (Z[_MOUTH_L] + Z[_MOUTH_R]) - 0.5 * (Z[_LIP_UPPER_OUTER] + Z[_LIP_LOWER_OUTER]),
        (Y[_LIP_UPPER_INNER] - Y[_LIP_UPPER_OUTER]) + (Y[_LIP_LOWER_OUTER] - Y[_LIP_LOWER_INNER]),
        Y[_LIP_UPPER_OUTER] - Y[_SUBNASALE],
        0.5 * (Y[_ALA_R] + Y[_ALA_L]) - inner_eye_y,
        gaze_h,
        gaze_v,
    ]
    out = np.asarray(vals + list(pose_angles(rot)), np.float64)
    return np.where(np.isfinite(out), out, 0.0)


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


class FaceFeatureExtractor:
    """Stateful (for deltas and MediaPipe tracking) per-stream face feature extractor.

    One instance per video stream; not thread-safe. `extract` never raises on bad
    input: unusable frames give a masked result with a reason.
    """

    def __init__(self, options: FaceOptions | None = None) -> None:
        self.options = options or FaceOptions()
        self._mesh = None
        self._prev: np.ndarray | None = None  # previous frame's state values, None after a gap
        self._open()
        self.expression_model = load_expression_model(self.options.expression_model)

    def _open(self) -> None:
        import mediapipe as mp  # imported lazily: heavy, and only the face stage needs it

        o = self.options
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=o.static_image_mode,
            max_num_faces=max(1, o.max_num_faces),
            refine_landmarks=o.refine_landmarks,
            min_detection_confidence=o.min_detection_confidence,
            min_tracking_confidence=o.min_tracking_confidence,
        )

    def reset(self) -> None:
        """Forget the previous frame (next frame's deltas are 0), e.g. after a seek."""
        self._prev = None

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def __enter__(self) -> FaceFeatureExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def extract(self, frame_rgb: np.ndarray) -> FaceResult:
        result = self._extract(frame_rgb)
        if not result.present:
            self._prev = None  # a gap: the next valid face starts with zero deltas
        return result

    def _extract(self, frame_rgb: np.ndarray) -> FaceResult:
        o = self.options
        img = to_rgb_uint8(frame_rgb)
        if img is None or self._mesh is None:
            return _masked("bad_frame")
        h, w = img.shape[:2]
        if min(h, w) < max(2, o.min_face_px):
            return _masked("bad_frame")  # cannot contain a face of the minimum size
        scale = min(1.0, o.max_side / max(h, w))
        if scale < 1.0:
            img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        if float(gray.mean()) < o.min_brightness:
            return _masked("too_dark")
        try:
            out = self._mesh.process(img)
        except Exception:
            return _masked("bad_frame")
        faces = out.multi_face_landmarks or []
        if not faces:
            return _masked("no_face")

        # Isotropic source-pixel coordinates: MediaPipe's z is on the x (width) scale.
        best, best_area = None, -1.0
        for f in faces:
            lm = np.array([(p.x, p.y, p.z) for p in f.landmark], np.float64)
            ext = (lm[:, :2].max(0) - lm[:, :2].min(0)) * (w, h)
            if ext[0] * ext[1] > best_area:
                best, best_area = lm, float(ext[0] * ext[1])
        assert best is not None
        lo, hi = best[:, :2].min(0) * (w, h), best[:, :2].max(0) * (w, h)
        bbox = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
        if min(hi - lo) < o.min_face_px:
            return FaceResult(np.zeros(FACE_FEATURE_DIM, np.float32), False, None, "too_small", len(faces), bbox)
        if not np.isfinite(best).all():
            return _masked("bad_frame", len(faces))

        state = expression_values(best * (w, h, w))
        delta = np.zeros_like(state)
        if self._prev is not None:
            delta = state - self._prev
            delta[_N_EXPR:] = _wrap(delta[_N_EXPR:])
        self._prev = state
        feats = np.concatenate([state, delta, [1.0]]).astype(np.float32)
        expression = None
        if self.expression_model is not None:
            crop = face_crop(gray, bbox)
            if crop is not None:
                expression = self.expression_model.predict(crop)[0]
        return FaceResult(feats, True, best.astype(np.float32), "ok", len(faces), bbox, expression)
