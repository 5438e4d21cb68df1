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


def test_card_mentions_asr_copies_only_when_the_run_used_them(tmp_path: Path) -> None:
    import copy

    from sentistream.models.model_card import write_model_card

    meta = registry.read_checkpoint_metadata(CKPT)["meta"]
    plain = copy.deepcopy(meta)
    plain["data"]["asr_copies"]["enabled"] = False
    plain["text_finetune"]["asr_copies"]["enabled"] = False
    with_copies, without = tmp_path / "a.md", tmp_path / "b.md"
    write_model_card(with_copies, meta, CKPT)
    write_model_card(without, plain, CKPT)
    assert "with their ASR copies" in with_copies.read_text()
    assert "their ASR copies" not in without.read_text()
    assert "on 1284 MOSI train utterances" in without.read_text()  # from meta.data.text, not a literal
