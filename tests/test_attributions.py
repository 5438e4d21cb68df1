"""Honest attributions (docs/protocol.md, "Attributions"): what each modality changed, by
occlusion, so a branch that learned nothing, or an input that carries nothing, shows about 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sentistream.engine.config import FusionConfig
from sentistream.engine.windowing import Window
from sentistream.models.base import FusionInputs
from sentistream.models.late_fusion import attribution_shares, fuse, occlusion_attributions
from sentistream.payloads import Word

SENTENCES = (
    "This film was terrible, boring and awful, I hated it.",
    "The acting was brilliant and I am very happy.",
    "it was okay I guess",
    "I really loved the music but the ending was a disappointment",
)


@pytest.fixture(scope="module")
def encoder():
    from sentistream.perception.text import TextEncoder

    return TextEncoder()


def _live(encoder, **cfg):
    from sentistream.models.live import LiveModel
    from sentistream.perception.audio_features import feature_dim
    from sentistream.perception.face import FACE_FEATURE_DIM

    return LiveModel(FusionConfig(backend="eager", **cfg), encoder, FACE_FEATURE_DIM, feature_dim())


def _window(live, text: str, kind: str, seed: int = 0) -> Window:
    rng = np.random.default_rng(seed)
    shapes = {"vision": (30, live.dims.vision), "audio": (300, live.dims.audio)}
    make = {
        "zero": lambda s: np.zeros(s, np.float32),
        "constant": lambda s: np.full(s, 0.7, np.float32),
        "random": lambda s: rng.normal(size=s).astype(np.float32),
    }[kind]
    words = [Word(w, 0.1 * i, 0.1 * i + 0.08) for i, w in enumerate(text.split())]
    return Window(0.0, 3.0, make(shapes["vision"]), np.ones(30, bool), make(shapes["audio"]), words, [], words)


def _event_attributions(live, window: Window, voice=None, face=None) -> dict[str, float]:
    """As the fusion stage does it (engine/stages/fusion.py)."""
    pred = live.predict(window)
    return occlusion_attributions(pred.score if window.context else None, voice, face, pred.occluded)


def test_with_occlusions_masks_one_modality_per_row():
    g = torch.Generator().manual_seed(0)
    x = FusionInputs.from_lengths(
        torch.randn(1, 5, 4, generator=g), torch.randn(1, 7, 3, generator=g), torch.randn(1, 2, 6, generator=g)
    )
    occ = x.with_occlusions()
    assert occ.batch_size == 4
    for row in range(4):
        for m, (seq, mask) in enumerate(zip(occ.sequences(), occ.masks())):
            if row == m + 1:
                assert not mask[row].any() and not seq[row].any()  # masked and zeroed
            else:
                assert mask[row].all() and torch.equal(seq[row], x.sequences()[m][0])
    with pytest.raises(ValueError):
        occ.with_occlusions()


def test_rule_attributions_are_what_masking_changes():
    # Absent modalities change nothing: exactly 0.
    a = occlusion_attributions(1.2, None, None)
    assert a == {"text": pytest.approx(1.2), "audio": 0.0, "vision": 0.0}
    assert occlusion_attributions(None, None, None) == {"text": 0.0, "audio": 0.0, "vision": 0.0}
    # A smiling face on neutral words pushes the score up; the words alone would be about 0.
    a = occlusion_attributions(0.1, None, 0.9)
    assert a["vision"] == pytest.approx(fuse(0.1, None, 0.9).score - 0.1) and a["vision"] > 0.5
    assert a["text"] == pytest.approx(fuse(0.1, None, 0.9).score - fuse(None, None, 0.9).score)
    # Voice only, no words: all of the score is the voice's; a sad voice pulls it down.
    a = occlusion_attributions(None, -0.5, None)
    assert a["audio"] == pytest.approx(fuse(None, -0.5, None).score) and a["audio"] < 0 and a["text"] == 0.0
    # The model's own audio input counts too when it reads one (occluded score differs).
    a = occlusion_attributions(1.0, None, None, {"audio": 0.4, "vision": 1.0})
    assert a["audio"] == pytest.approx(0.6) and a["vision"] == 0.0
    shares = attribution_shares({"text": 1.0, "audio": -1.0, "vision": 0.0})
    assert shares == {"text": 0.5, "audio": 0.5, "vision": 0.0}


def test_shipped_model_reads_text_only_so_zeroed_or_constant_av_show_zero(encoder):
    live = _live(encoder)
    assert live.reads == (True, False, False)  # its audio / vision were trained on label-free data
    for text in SENTENCES:
        for kind in ("zero", "constant", "random"):
            a = _event_attributions(live, _window(live, text, kind))
            assert abs(a["audio"]) <= 0.02 and abs(a["vision"]) <= 0.02, (text, kind, a)
            assert abs(a["text"]) > 0.1 or "okay" in text  # the words did move it


def test_dead_branch_shows_zero_and_a_live_one_does_not(encoder):
    torch.manual_seed(0)
    live = _live(encoder, model="tfn")  # an untrained TFN reads all three inputs
    assert live.reads == (True, True, True)
    last = live.model.vision_net.net[-2]  # the vision branch learned nothing: its output is 0
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        live.model.post_fusion[-1].weight.mul_(300.0)  # untrained scores are ~0: give them a scale
    audio_moved = []
    for i, text in enumerate(SENTENCES):
        for kind in ("constant", "random"):
            a = _event_attributions(live, _window(live, text, kind, seed=i))
            assert abs(a["vision"]) <= 0.02, (text, kind, a)
            audio_moved.append(abs(a["audio"]))
    assert max(audio_moved) > 0.02  # the live, random audio branch does change the score


def test_the_batch_of_four_equals_separately_masked_windows(encoder):
    live = _live(encoder, model_inputs="all")
    for i, text in enumerate(SENTENCES[:2]):
        window = _window(live, text, "random", seed=i)
        pred = live.predict(window)
        no_audio = Window(
            window.t0, window.t1, window.vision, window.vision_present, window.audio[:0], [], [], window.context
        )
        no_vision = Window(
            window.t0, window.t1, window.vision[:0], window.vision_present[:0], window.audio, [], [], window.context
        )
        assert pred.occluded is not None
        assert pred.occluded["audio"] == pytest.approx(live.predict(no_audio).score, abs=1e-4)
        assert pred.occluded["vision"] == pytest.approx(live.predict(no_vision).score, abs=1e-4)
    off = _live(encoder, model_inputs="all", attribution="off")
    pred = off.predict(_window(off, SENTENCES[0], "random"))
    assert pred.occluded == {"audio": pred.score, "vision": pred.score}  # one row only
