"""Fine-tuned text-encoder layers: training writes a file, the engine's TextEncoder applies it, a
checkpoint trained on it brings it along (and refuses to run without it or with another one)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from conftest import REPO, sentistream_cmd

CSV = REPO.parent / "shared" / "data" / "mosi" / "mosi_transcripts.csv"
TEXTS = [
    "this movie was absolutely wonderful",
    "it was boring and a total waste of time",
    "the acting was great",
    "i hated every minute",
    "what a lovely story",
    "terrible plot",
    "i really enjoyed it",
    "not good at all",
]
LABELS = np.array([2.5, -2.5, 2.0, -3.0, 2.2, -2.0, 1.8, -1.5], np.float32)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """One epoch of real fine-tuning of the top layer on a handful of labelled sentences."""
    from sentistream.models.text_finetune import LabelledTexts, TextFinetuneConfig, finetune_text_encoder
    from sentistream.perception.text import save_finetune

    data = LabelledTexts(TEXTS, LABELS)
    res = finetune_text_encoder(
        [data], {"ref": data}, {"ref": data}, TextFinetuneConfig(train_layers=1, epochs=2, lr=1e-3, batch_size=4)
    )
    path = tmp_path_factory.mktemp("ft") / "text_ft.safetensors"
    sha = save_finetune(res.encoder, res.trained_prefixes, path, {"note": "test"})
    return path, sha, res


def test_finetune_trains_only_the_top_layer_and_selects_on_valid(finetuned):
    _, _, res = finetuned
    assert res.trained_prefixes == ["encoder.layer.5."]
    assert res.best_epoch in (1, 2) and len(res.history) == 2
    assert res.history[res.best_epoch - 1]["select_mae"] == min(h["select_mae"] for h in res.history)
    assert set(res.test) == {"ref"} and 0 <= res.test["ref"]["mae"] < 6


def test_text_encoder_applies_the_file(finetuned):
    from sentistream.models import data as data_mod
    from sentistream.perception.text import TextEncoder, TextEncoderOptions, read_finetune

    path, sha, _ = finetuned
    state, info = read_finetune(path)
    assert info["sha256"] == sha and info["meta"] == {"note": "test"}
    assert state and all(k.startswith("encoder.layer.5.") for k in state)
    assert all(v.dtype == torch.float16 for v in state.values())
    plain = TextEncoder(TextEncoderOptions(cache_size=0))
    tuned = TextEncoder(TextEncoderOptions(cache_size=0, finetune=str(path)))
    assert tuned.finetune_sha256 == sha and plain.finetune_sha256 == ""
    a, b = plain.encode(TEXTS[0]), tuned.encode(TEXTS[0])
    assert a.tokens.shape == b.tokens.shape and a.tokens.dtype == np.float32 == b.tokens.dtype
    assert np.abs(a.tokens - b.tokens).max() > 1e-3  # the layer changed ...
    lower = {k: v for k, v in tuned.model.state_dict().items() if "layer.5." not in k}
    base = plain.model.state_dict()
    assert all(torch.equal(v, base[k]) for k, v in lower.items())  # ... and nothing else did
    _, ident_plain = data_mod.make_text_encoder()
    _, ident_tuned = data_mod.make_text_encoder(finetune=str(path))
    assert ident_tuned["finetune_sha256"] == sha and "finetune_sha256" not in ident_plain
    assert ident_tuned["finetune"] == path.name and ident_plain["options"] == ident_tuned["options"]


def test_foreign_or_broken_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    from sentistream.perception.text import FINETUNE_FORMAT, TextEncoder, TextEncoderOptions

    misfit = tmp_path / "misfit.safetensors"
    save_file(
        {"encoder.layer.0.attention.self.query.weight": torch.zeros(2, 2)},
        str(misfit),
        metadata={"format": FINETUNE_FORMAT},
    )
    with pytest.raises(ValueError, match="do not fit"):
        TextEncoder(TextEncoderOptions(finetune=str(misfit)))
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(other))
    with pytest.raises(ValueError, match="not a sentistream text-encoder fine-tune"):
        TextEncoder(TextEncoderOptions(finetune=str(other)))
    with pytest.raises(FileNotFoundError, match="no fine-tuned text-encoder file"):
        TextEncoder(TextEncoderOptions(finetune=str(tmp_path / "missing.safetensors")))


def _checkpoint_needing(tmp_path, ft_path, sha):
    import shutil

    from sentistream.models.base import ModalityDims
    from sentistream.models.registry import build, save_checkpoint
    from sentistream.perception.audio_features import feature_dim
    from sentistream.perception.face import FACE_FEATURE_DIM

    torch.manual_seed(0)
    model = build("lmf", ModalityDims(text=384, audio=feature_dim(), vision=FACE_FEATURE_DIM))
    ckpt = tmp_path / "live.safetensors"
    save_checkpoint(model, ckpt, {"text_finetune": {"file": "text_ft.safetensors", "sha256": sha}})
    shutil.copyfile(ft_path, tmp_path / "text_ft.safetensors")
    return ckpt


def _live(ckpt, encoder):
    from sentistream.engine.config import FusionConfig
    from sentistream.models.live import LiveModel
    from sentistream.perception.audio_features import feature_dim
    from sentistream.perception.face import FACE_FEATURE_DIM

    return LiveModel(
        FusionConfig(checkpoint=str(ckpt), backend="eager"),
        encoder,
        vision_dim=FACE_FEATURE_DIM,
        audio_dim=feature_dim(),
    )


def test_live_model_brings_its_text_encoder_layers(finetuned, tmp_path):
    from sentistream.perception.text import BackgroundTextEncoder, TextEncoder, TextEncoderOptions

    path, sha, _ = finetuned
    ckpt = _checkpoint_needing(tmp_path, path, sha)
    plain = TextEncoder(TextEncoderOptions(cache_size=0))
    _live(ckpt, plain)
    assert plain.finetune_sha256 == sha  # applied from beside the checkpoint
    bg = BackgroundTextEncoder(TextEncoder(TextEncoderOptions(cache_size=0)))
    try:
        _live(ckpt, bg)
        assert bg.encoder.finetune_sha256 == sha
    finally:
        bg.close()
    (tmp_path / "text_ft.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="keep the two files together"):
        _live(ckpt, TextEncoder(TextEncoderOptions(cache_size=0)))

    class ServerSide:  # as engine.fusion_server.load_fusion_model: windows arrive encoded
        dim = 384
        encodes_text = False

    assert _live(ckpt, ServerSide()).name == "lmf"  # so the server does not need the layers


def test_live_model_refuses_another_text_encoder_finetune(finetuned, tmp_path):
    from sentistream.perception.text import TextEncoder, TextEncoderOptions

    path, sha, _ = finetuned
    ckpt = _checkpoint_needing(tmp_path, path, "0" * 64)  # trained on some other file
    with pytest.raises(ValueError, match="sha256 differs"):
        _live(ckpt, TextEncoder(TextEncoderOptions(cache_size=0)))
    with pytest.raises(ValueError, match="is not the text encoder"):
        _live(ckpt, TextEncoder(TextEncoderOptions(cache_size=0, finetune=str(path))))


def test_shipped_checkpoint_and_its_text_layers_agree():
    from sentistream.models.live import shipped_checkpoint_path
    from sentistream.models.registry import read_checkpoint_metadata
    from sentistream.perception.text import file_sha256

    ckpt = shipped_checkpoint_path()
    if not ckpt.is_file():
        pytest.skip("no shipped checkpoint")
    want = read_checkpoint_metadata(ckpt)["meta"].get("text_finetune")
    if not want:
        pytest.skip("the shipped model uses the plain encoder")
    assert file_sha256(ckpt.parent / want["file"]) == want["sha256"]
    assert (ckpt.parent / want["file"]).stat().st_size < 50e6


@pytest.mark.skipif(not CSV.is_file(), reason=f"shared data not found at {CSV}")
def test_train_text_cli_writes_a_loadable_file(tmp_path):
    out = tmp_path / "ft.safetensors"
    cache = tmp_path / "cache"
    proc = subprocess.run(
        sentistream_cmd(
            "train-text",
            "--limit",
            "24",
            "--epochs",
            "1",
            "--layers",
            "1",
            "--no-asr-augment",
            "--threads",
            "1",
            "--out",
            str(out),
            "--crossfit",
            "2",
            "--cache-dir",
            str(cache),
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote" in proc.stdout and "valid ref" in proc.stdout
    from sentistream.perception.text import read_finetune

    state, info = read_finetune(out)
    assert info["meta"]["best_epoch"] == 1 and info["meta"]["asr_copies"] == {"enabled": False}
    assert info["meta"]["data"].startswith("mosi_transcripts.csv")
    assert all(k.startswith("encoder.layer.5.") for k in state)
    cf = info["meta"]["crossfit"]  # one fold encoder per half of the train videos, in the cache
    assert cf["folds"] == 2 and set(cf["video_fold"].values()) == {0, 1}
    assert sum(f["train_rows"] for f in cf["files"]) == 24  # each row is held out exactly once
    for f in cf["files"]:
        assert read_finetune(cache / "text_finetune" / f["file"])[1]["sha256"] == f["sha256"]
    rf = info["meta"]["refit"]  # shipped: retrained on train + valid; the selected encoder is kept
    assert rf["enabled"] and rf["epochs"] == 1 and rf["rows"] == 48
    select = cache / "text_finetune" / rf["select_encoder"]["file"]
    assert read_finetune(select)[1]["sha256"] == rf["select_encoder"]["sha256"] != info["sha256"]


def test_doctor_reports_the_text_layers_a_checkpoint_needs(finetuned, tmp_path):
    from sentistream.engine.doctor import _text_finetune_check

    path, sha, _ = finetuned
    ckpt = _checkpoint_needing(tmp_path, path, sha)
    [row] = _text_finetune_check(ckpt)
    assert row["name"] == "text_finetune" and row["status"] == "ok"
    (tmp_path / "text_ft.safetensors").write_bytes(b"replaced")
    assert _text_finetune_check(ckpt)[0]["status"] == "missing"
    (tmp_path / "text_ft.safetensors").unlink()
    [row] = _text_finetune_check(ckpt)
    assert row["status"] == "missing" and "train-text" in row["detail"]


def test_crossfit_folds_split_by_video_deterministically():
    from sentistream.models.text_finetune import crossfit_folds

    vids = [f"v{i % 7}" for i in range(40)]
    folds = crossfit_folds(vids, 2, seed=0)
    assert folds == crossfit_folds(list(reversed(vids)), 2, seed=0)  # order of rows does not matter
    assert set(folds) == set(vids) and sorted(list(folds.values()).count(k) for k in (0, 1)) == [3, 4]


def test_crossfit_dir_never_names_a_folder_none(tmp_path):
    from sentistream.models import data as data_mod
    from sentistream.models.text_finetune import crossfit_dir

    default = data_mod.default_cache_dir() / "text_finetune" / "k"
    assert crossfit_dir(None, "k") == default and crossfit_dir("none", "k") == default
    assert crossfit_dir(tmp_path, "k") == tmp_path / "text_finetune" / "k"


def test_out_of_fold_encoding_uses_the_encoder_that_never_saw_the_video(finetuned, tmp_path):
    import shutil

    from sentistream.models.live_training import out_of_fold_encode
    from sentistream.perception.text import TextEncoder, TextEncoderOptions, save_finetune

    path, sha, _ = finetuned
    fdir = tmp_path / "text_finetune" / "k"
    fdir.mkdir(parents=True)
    shutil.copyfile(path, fdir / "fold0.safetensors")
    plain = TextEncoder(TextEncoderOptions(cache_size=0))
    sha1 = save_finetune(plain.model, ["encoder.layer.5."], fdir / "fold1.safetensors")  # = the base layers
    cf = {
        "folds": 2,
        "video_fold": {"a": 0, "b": 1},
        "files": [{"file": "k/fold0.safetensors", "sha256": sha}, {"file": "k/fold1.safetensors", "sha256": sha1}],
    }
    texts, vids = TEXTS[:4], ["a", "b", "a", "b"]
    store, pooled = out_of_fold_encode(texts, vids, cf, tmp_path, progress=False)
    tuned = TextEncoder(TextEncoderOptions(cache_size=0, finetune=str(path)))
    for i, (t, v) in enumerate(zip(texts, vids)):
        want = (tuned if v == "a" else plain).encode(t)
        np.testing.assert_allclose(store.get(i), want.tokens, atol=2e-2)  # fold 1 = base layers in float16
        np.testing.assert_allclose(pooled[i], want.pooled, atol=2e-2)
    assert np.abs(store.get(0) - plain.encode(texts[0]).tokens).max() > 0.05  # fold 0 is really tuned
    (fdir / "fold1.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="run `sentistream train-text` again"):
        out_of_fold_encode(texts, vids, cf, tmp_path, progress=False)


def test_run_with_text_layers_the_model_was_not_trained_on_stops_with_the_reason(finetuned, tmp_path):
    """A wrong text.finetune is a fatal error of the fusion stage: one clear line, no respawn loop."""
    from sentistream.models.live import shipped_checkpoint_path
    from sentistream.models.registry import read_checkpoint_metadata

    if not shipped_checkpoint_path().is_file() or not read_checkpoint_metadata(shipped_checkpoint_path())["meta"].get(
        "text_finetune"
    ):
        pytest.skip("the shipped model has no fine-tuned text layers")
    path, _, _ = finetuned
    cfg = tmp_path / "wrong.toml"
    cfg.write_text(f'[text]\nfinetune = "{path}"\n')
    proc = subprocess.run(
        sentistream_cmd("run", "--source", "demo", "--duration", "3", "--view", "none", "--config", str(cfg)),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is not the text encoder" in errors[0] and str(path) in errors[0], errors
    assert "restarts: none" in proc.stdout + proc.stderr


def test_refit_without_valid_replays_the_selected_epochs_exactly():
    """No valid sets: no selection, the weights after ``stop_after`` epochs of the same schedule.
    On the same rows, that reproduces the selected run's weights (selection only reads them)."""
    from sentistream.models.text_finetune import LabelledTexts, TextFinetuneConfig, finetune_text_encoder

    data = LabelledTexts(TEXTS, LABELS)
    cfg = TextFinetuneConfig(train_layers=1, epochs=3, lr=1e-3, batch_size=4)
    # a valid set on which the model only improves would pick the last epoch: use its train rows
    sel = finetune_text_encoder([data], {"ref": data}, None, cfg)
    refit = finetune_text_encoder([data], {}, {"ref": data}, cfg, stop_after=sel.best_epoch)
    assert len(refit.history) == sel.best_epoch and "select_mae" not in refit.history[-1]
    assert refit.best_epoch == sel.best_epoch and refit.valid == {}
    a, b = sel.encoder.state_dict(), refit.encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert set(refit.test) == {"ref"}


def test_train_live_encodes_valid_rows_with_the_selected_encoder(finetuned, tmp_path):
    import shutil

    from sentistream.models.live_training import _text_select_encoder

    path, sha, _ = finetuned
    assert _text_select_encoder({}, tmp_path) == ({}, None)
    assert _text_select_encoder({"refit": {"enabled": False}}, tmp_path) == ({}, None)
    (tmp_path / "text_finetune" / "k").mkdir(parents=True)
    shutil.copyfile(path, tmp_path / "text_finetune" / "k" / "select.safetensors")
    meta = {"refit": {"enabled": True, "select_encoder": {"file": "k/select.safetensors", "sha256": sha}}}
    select_set, [(enc, ident)] = _text_select_encoder(meta, tmp_path)
    assert ident["finetune_sha256"] == sha and select_set["video_fold"] == {}
    meta["refit"]["select_encoder"]["sha256"] = "0" * 64
    with pytest.raises(ValueError, match="not the encoder the text fine-tune recorded"):
        _text_select_encoder(meta, tmp_path)
