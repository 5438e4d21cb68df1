"""The model card is written from the checkpoint's metadata, so its figures are the checkpoint's."""

from __future__ import annotations

from pathlib import Path

from conftest import REPO

from sentistream.models import registry
from sentistream.models.model_card import card_from_checkpoint

CKPT = REPO / "models" / "live_model.safetensors"
CARD = REPO / "models" / "MODEL_CARD.md"


def test_shipped_card_is_the_one_its_checkpoint_writes(tmp_path: Path) -> None:
    out = tmp_path / "card.md"
    card_from_checkpoint(CKPT, out)
    assert out.read_text() == CARD.read_text(), "models/MODEL_CARD.md is stale: run train-live --card-from"


def test_card_states_the_checkpoints_test_figures(tmp_path: Path) -> None:
    meta = registry.read_checkpoint_metadata(CKPT)["meta"]
    out = tmp_path / "card.md"
    card_from_checkpoint(CKPT, out)
    text = out.read_text()
    test = meta["metrics"]["test"]
    assert f"{100 * test['acc2_non0']:.1f}" in text and f"{test['mae']:.3f}" in text
    assert meta["text_finetune"]["file"] in text and meta["command"] in text
