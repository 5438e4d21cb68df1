"""Face features on real images (skimage's astronaut) and on hostile frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from sentistream.perception.face import (
    FACE_FEATURE_DIM,
    FACE_FEATURE_NAMES,
    REASONS,
    FaceFeatureExtractor,
    FaceOptions,
)

IDX = {n: i for i, n in enumerate(FACE_FEATURE_NAMES)}
STATE = slice(0, IDX["delta_brow_raise_l"])  # expression + pose; deltas depend on the previous call
LR_PAIRS = [(n, n[:-2] + "_r") for n in FACE_FEATURE_NAMES if n.endswith("_l") and not n.startswith("delta_")]


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()  # RGB uint8 512x512


@pytest.fixture(scope="module")
def frame(astronaut: np.ndarray) -> np.ndarray:
    """The astronaut padded to a 640x480 camera frame."""
    out = np.zeros((480, 640, 3), np.uint8)
    out[:, 64:576] = astronaut[:480]
    return out


@pytest.fixture(scope="module")
def close_up(astronaut: np.ndarray) -> np.ndarray:
    """The face upscaled so landmarks (and small pose angles) are stable."""
    out = np.zeros((480, 640, 3), np.uint8)
    out[20:460, 100:540] = cv2.resize(astronaut[20:240, 180:400], (440, 440))
    return out


@pytest.fixture(scope="module")
def still() -> FaceFeatureExtractor:
    ex = FaceFeatureExtractor(FaceOptions(static_image_mode=True))
    yield ex
    ex.close()


def test_names_match_dim() -> None:
    assert len(FACE_FEATURE_NAMES) == FACE_FEATURE_DIM == len(set(FACE_FEATURE_NAMES))
    assert FACE_FEATURE_NAMES[-1] == "face_present"
    assert {"head_yaw", "head_pitch", "head_roll", "delta_head_yaw", "mouth_open"} <= set(FACE_FEATURE_NAMES)


def test_astronaut_face(still: FaceFeatureExtractor, frame: np.ndarray) -> None:
    still.reset()
    r = still.extract(frame)
    assert r.present and r.reason == "ok" and r.num_faces == 1
    assert r.landmarks is not None and r.landmarks.shape == (478, 3) and r.landmarks.dtype == np.float32
    assert r.features.shape == (FACE_FEATURE_DIM,) and r.features.dtype == np.float32
    assert np.isfinite(r.features).all()
    assert r.features[IDX["face_present"]] == 1.0
    # First frame: no deltas. A near-frontal, upright, closed-lipped, open-eyed face.
    assert not r.features[IDX["delta_brow_raise_l"] : IDX["face_present"]].any()
    for angle in ("head_yaw", "head_pitch", "head_roll"):
        assert abs(r.features[IDX[angle]]) < 0.25
    for side in ("l", "r"):
        assert 0.05 < r.features[IDX[f"eye_open_{side}"]] < 0.4
        assert r.features[IDX[f"brow_raise_{side}"]] > 0.1
    assert 0.7 < r.features[IDX["lip_stretch"]] < 1.4
    assert r.bbox is not None and 200 < r.bbox[0] < r.bbox[2] < 400


def test_mirror_swaps_sides_and_flips_yaw_and_roll(still: FaceFeatureExtractor, close_up: np.ndarray) -> None:
    a = still.extract(close_up).features
    m = still.extract(np.ascontiguousarray(close_up[:, ::-1])).features
    assert a[IDX["face_present"]] == m[IDX["face_present"]] == 1.0
    assert np.sign(a[IDX["head_yaw"]]) == -np.sign(m[IDX["head_yaw"]])
    assert abs(a[IDX["head_yaw"]] + m[IDX["head_yaw"]]) < 0.05
    assert np.sign(a[IDX["head_roll"]]) == -np.sign(m[IDX["head_roll"]]) and abs(a[IDX["head_roll"]]) > 0.02
    assert abs(a[IDX["head_roll"]] + m[IDX["head_roll"]]) < 0.03
    # Left/right measurements trade places: swapped pairs agree better than unswapped ones.
    swapped = sum(abs(a[IDX[left]] - m[IDX[right]]) + abs(a[IDX[right]] - m[IDX[left]]) for left, right in LR_PAIRS)
    same = sum(abs(a[IDX[left]] - m[IDX[left]]) + abs(a[IDX[right]] - m[IDX[right]]) for left, right in LR_PAIRS)
    assert swapped < same
    assert abs(a[IDX["gaze_h"]] + m[IDX["gaze_h"]]) < 0.03


@pytest.mark.parametrize("degrees", [-15.0, 15.0])
def test_roll_follows_image_rotation(still: FaceFeatureExtractor, frame: np.ndarray, degrees: float) -> None:
    base = still.extract(frame).features[IDX["head_roll"]]
    rot = cv2.warpAffine(frame, cv2.getRotationMatrix2D((290, 120), degrees, 1.0), (640, 480))
    r = still.extract(rot)
    assert r.present
    # cv2's positive angle is counter-clockwise on screen; roll is + clockwise.
    assert r.features[IDX["head_roll"]] - base == pytest.approx(-np.deg2rad(degrees), abs=0.08)
    # Expression geometry is measured in the head frame, so an in-plane rotation barely moves it.
    e0, e1 = still.extract(frame).features, r.features
    for name in ("eye_open_l", "brow_raise_r", "lip_stretch", "jaw_drop"):
        assert e1[IDX[name]] == pytest.approx(e0[IDX[name]], abs=0.08)


def test_deltas_and_gaps(frame: np.ndarray) -> None:
    with FaceFeatureExtractor() as ex:  # video mode: tracking between frames
        first = ex.extract(frame)
        second = ex.extract(frame)
        d = slice(IDX["delta_brow_raise_l"], IDX["face_present"])
        assert first.present and second.present
        assert not first.features[d].any()
        assert np.abs(second.features[d]).max() < 0.05  # same image: tiny tracking jitter only
        gap = ex.extract(np.zeros_like(frame))
        assert not gap.present and not gap.features.any()
        after = ex.extract(frame)
        assert after.present and not after.features[d].any()  # no delta across the gap
        ex.extract(frame)
        ex.reset()
        assert not ex.extract(frame).features[d].any()


def test_black_frame_is_masked(still: FaceFeatureExtractor) -> None:
    r = still.extract(np.zeros((480, 640, 3), np.uint8))
    assert not r.present and r.reason in ("too_dark", "no_face")
    assert r.landmarks is None and r.features.shape == (FACE_FEATURE_DIM,) and not r.features.any()


def test_noise_and_flat_frames_have_no_face(still: FaceFeatureExtractor) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for img in (noise, np.full((480, 640, 3), 128, np.uint8)):
        r = still.extract(img)
        assert not r.present and r.reason == "no_face" and not r.features.any()


def test_small_face_is_masked(frame: np.ndarray) -> None:
    with FaceFeatureExtractor(FaceOptions(static_image_mode=True, min_face_px=200)) as ex:
        r = ex.extract(frame)  # the face is ~95 px
    assert not r.present and r.reason == "too_small" and not r.features.any() and r.num_faces == 1


def test_largest_of_several_faces(still: FaceFeatureExtractor, astronaut: np.ndarray) -> None:
    face = astronaut[10:250, 170:410]
    img = np.zeros((480, 640, 3), np.uint8)
    img[60:380, 0:320] = cv2.resize(face, (320, 320))
    img[150:350, 400:600] = cv2.resize(face, (200, 200))
    for im, left_half in ((img, True), (np.ascontiguousarray(img[:, ::-1]), False)):
        r = still.extract(im)
        assert r.present and r.num_faces == 2 and r.bbox is not None
        assert ((r.bbox[0] + r.bbox[2]) / 2 < 320) == left_half


def test_equivalent_encodings_agree(still: FaceFeatureExtractor, frame: np.ndarray) -> None:
    ref = still.extract(frame).features[STATE]
    rgba = np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])
    for img in (rgba, frame.astype(np.float32) / 255.0, frame.astype(np.float64), frame.astype(np.uint16) * 257):
        r = still.extract(img)
        assert r.present
        np.testing.assert_allclose(r.features[STATE], ref, atol=0.02)


def test_grayscale_and_huge_frames(still: FaceFeatureExtractor, frame: np.ndarray, astronaut: np.ndarray) -> None:
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    assert still.extract(gray).present
    assert still.extract(gray[:, :, None]).present
    huge = np.zeros((4320, 7680, 3), np.uint8)
    huge[:, 1680:6000] = cv2.resize(astronaut, (4320, 4320))
    r = still.extract(huge)  # downscaled to 1280 wide inside; bbox in source pixels
    assert r.present and r.bbox is not None and r.bbox[2] - r.bbox[0] > 400


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((1, 1, 3), np.uint8),
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((0,), np.float32),
        np.zeros((10,), np.uint8),
        np.zeros((64, 64, 5), np.uint8),
        np.full((64, 64, 3), np.nan, np.float32),
        np.full((64, 64, 3), np.inf),
        None,
        "not an image",
    ],
    ids=["1x1", "empty", "empty1d", "1d", "5ch", "nan", "inf", "none", "str"],
)
def test_bad_frames_never_raise(still: FaceFeatureExtractor, bad: object) -> None:
    r = still.extract(bad)  # type: ignore[arg-type]
    assert not r.present and r.reason == "bad_frame" and r.landmarks is None
    assert r.features.shape == (FACE_FEATURE_DIM,) and not r.features.any()


def test_nan_pixels_in_a_real_frame(still: FaceFeatureExtractor, frame: np.ndarray) -> None:
    img = frame.astype(np.float32) / 255.0
    img[100:110, 300:310] = np.nan
    r = still.extract(img)
    assert r.reason in REASONS and (r.present or r.reason == "bad_frame")
    assert np.isfinite(r.features).all()


def test_odd_sizes_do_not_raise(still: FaceFeatureExtractor) -> None:
    for shape in [(2, 2000, 3), (2000, 2, 3), (31, 17, 3), (8000, 100, 3)]:
        r = still.extract(np.full(shape, 100, np.uint8))
        assert r.reason in REASONS and not r.present


def test_without_iris_refinement(frame: np.ndarray) -> None:
    with FaceFeatureExtractor(FaceOptions(static_image_mode=True, refine_landmarks=False)) as ex:
        r = ex.extract(frame)
    assert r.present and r.landmarks is not None and r.landmarks.shape == (468, 3)
    assert r.features.shape == (FACE_FEATURE_DIM,) and r.features[IDX["gaze_h"]] == r.features[IDX["gaze_v"]] == 0.0
