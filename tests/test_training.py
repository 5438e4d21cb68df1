"""Training loop and dataset loaders (fast: tiny synthetic data, tiny models)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sentistream.models import data, registry, training
from sentistream.models.base import FusionInputs, ModalityDims

MOSI_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "mosi" / "mosi_utterances.npz"

TINY_ALMT = dict(
    d=16,
    tokens=2,
    heads=2,
    dim_head=8,
    ahl_dim_head=8,
    ahl_layers=2,
    embed_depth=1,
    fusion_depth=1,
    mlp_dim=16,
    dropout=0.0,
    max_len=16,
)


def _synthetic_split(n: int, dims: ModalityDims, seed: int, max_len: int = 5) -> data.SplitData:
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).normal(size=dims.text)
    seqs = {m: [] for m in ("text", "audio", "vision")}
    labels = []
    for _ in range(n):
        for m, d in zip(("text", "audio", "vision"), dims):
            seqs[m].append(rng.normal(size=(int(rng.integers(1, max_len + 1)), d)).astype(np.float32))
        labels.append(float(np.clip(2.0 * np.tanh(seqs["text"][-1].mean(0) @ w), -3, 3)))
    return data.SplitData(
        *(data.SequenceStore.from_list(seqs[m], d) for m, d in zip(("text", "audio", "vision"), dims)),
        np.array(labels, np.float32),
        np.array([f"v{i // 4}_{i}" for i in range(n)]),
    )


def _synthetic(n: int = 48, dims: ModalityDims | None = None) -> data.DatasetSplits:
    dims = dims or ModalityDims(6, 3, 4)
    tr = _synthetic_split(n, dims, 0)
    return data.DatasetSplits(tr, tr, _synthetic_split(16, dims, 1), name="synthetic")


def _cfg(**kw) -> training.TrainConfig:
    base = dict(
        epochs=60,
        batch_size=16,
        lr=3e-3,
        weight_decay=0.0,
        warmup_ratio=0.05,
        patience=0,
        loss="l1",
        progress=False,
        grad_clip=1.0,
    )
    return training.TrainConfig.from_dict({**base, **kw})


# --------------------------------------------------------------------------- training loop
def test_loop_overfits_tiny_dataset():
    ds = _synthetic(32)
    res = training.train_model("almt", ds, _cfg(epochs=30, lr=5e-3), seed=0, hparams=TINY_ALMT)
    first = res.history[0]["valid_mae"]
    assert res.valid["mae"] < 0.35 * first, (first, res.valid["mae"])
    assert res.valid["acc2_has0"] > 0.9
    assert set(res.test) >= {"acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc7", "acc5", "mae", "corr"}
    assert not res.model.training


def test_seeds_deterministic():
    ds = _synthetic(32)
    cfg = _cfg(epochs=4, audio_dropout=0.5, vision_dropout=0.5)
    a = training.train_model("almt", ds, cfg, seed=3, hparams=TINY_ALMT)
    b = training.train_model("almt", ds, cfg, seed=3, hparams=TINY_ALMT)
    c = training.train_model("almt", ds, cfg, seed=4, hparams=TINY_ALMT)
    assert a.valid == b.valid and a.test == b.test
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), k
    assert a.valid != c.valid


def test_train_seeds_mean_std():
    ds = _synthetic(24)
    agg = training.train_seeds("almt", ds, _cfg(epochs=2), seeds=(0, 1), hparams=TINY_ALMT)
    t = agg.test
    vals = [r.test["mae"] for r in agg.results]
    assert t["mae"] == pytest.approx(np.mean(vals)) and t["mae_std"] == pytest.approx(np.std(vals))
    assert agg.seeds == [0, 1]


def test_early_stopping_restores_best_validation_epoch():
    ds = _synthetic(32)
    res = training.train_model("almt", ds, _cfg(epochs=30, patience=2, lr=5e-2), seed=0, hparams=TINY_ALMT)
    maes = [h["valid_mae"] for h in res.history]
    assert res.best_epoch == 1 + int(np.argmin(maes))
    assert res.valid["mae"] == pytest.approx(min(maes), rel=1e-5)
    assert res.epochs_run <= 30


def test_concat_splits_keeps_rows_in_order():
    dims = ModalityDims(6, 3, 4)
    a, b = _synthetic_split(5, dims, 0), _synthetic_split(3, dims, 1)
    c = data.concat_splits(a, b)
    assert len(c) == 8 and list(c.ids) == list(a.ids) + list(b.ids)
    np.testing.assert_array_equal(c.labels, np.r_[a.labels, b.labels])
    for m in ("text", "audio", "vision"):
        for i in range(8):
            src, j = (a, i) if i < 5 else (b, i - 5)
            np.testing.assert_array_equal(c.store(m).get(i), src.store(m).get(j))
    with pytest.raises(ValueError, match="widths"):
        data.concat_splits(a, _synthetic_split(2, ModalityDims(5, 3, 4), 2))


def test_refit_replays_the_selected_run_on_train_plus_valid():
    """A refit on (train[:20] + train[20:]) is the selected run on train, stopped at its epoch."""
    ds = _synthetic(32)
    ds.valid = _synthetic_split(12, ds.dims, 7)
    sel = training.train_model("almt", ds, _cfg(epochs=12, patience=3, lr=2e-2), seed=5, hparams=TINY_ALMT)
    assert 1 <= sel.best_epoch < 12
    n = len(ds.train)
    split = data.DatasetSplits(ds.train.subset(np.arange(20)), ds.train.subset(np.arange(20, n)), ds.test)
    again = training.refit_model("almt", split, sel, hparams=TINY_ALMT)
    assert again.epochs_run == sel.best_epoch and len(again.history) == sel.best_epoch
    for (k, x), (_, y) in zip(sel.model.state_dict().items(), again.model.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=k)
    assert again.test["mae"] == pytest.approx(sel.test["mae"], rel=1e-5)
    # with real validation rows the refit sees more data: another model, and no selection on valid
    seen: list[int] = []

    def count_rows(inputs, y, gen):  # the batch augment hook sees every train + valid row
        seen.append(len(y))
        return inputs

    refit = training.refit_model("almt", ds, sel, hparams=TINY_ALMT, augment=count_rows)
    assert refit.test["mae"] != pytest.approx(sel.test["mae"], rel=1e-6)
    assert all(not k.startswith("valid_") for h in refit.history for k in h)
    assert sum(seen) == sel.best_epoch * (len(ds.train) + len(ds.valid))


def test_two_stage_model_runs_both_stages():
    ds = _synthetic(24)
    hp = dict(
        enc_dim=16,
        enc_layers=1,
        enc_heads=2,
        adapter_layers=1,
        adapter_heads=2,
        hidden=16,
        ffn=16,
        heads=2,
        fusion_layers=1,
        max_len=16,
    )
    res = training.train_model("kuda", ds, _cfg(epochs=2, stage1_epochs=2), seed=0, hparams=hp)
    assert [h["stage"] for h in res.history] == [1, 1, 2, 2]
    assert res.model.stage == 2
    # a refit replays both stages up to the epochs the selected run chose for each
    stage1 = [h for h in res.history if h["stage"] == 1]
    best1 = 1 + int(np.argmin([h["valid_aux"] for h in stage1]))
    ref = training.refit_model("kuda", ds, res, hparams=hp)
    assert [h["stage"] for h in ref.history] == [1] * best1 + [2] * res.best_epoch


def test_modality_dropout_masks_whole_modalities():
    b = 64
    x = FusionInputs.from_vectors(torch.ones(b, 3), torch.ones(b, 2), torch.ones(b, 2))
    g = torch.Generator().manual_seed(0)
    y = training.modality_dropout(x, (0.0, 0.5, 1.0), g)
    assert y.text_mask.all()
    assert not y.vision_mask.any() and float(y.vision.abs().sum()) == 0.0
    dropped = ~y.audio_mask[:, 0]
    assert 10 < int(dropped.sum()) < 54
    assert float(y.audio[dropped].abs().sum()) == 0.0


def test_warmup_cosine_schedule():
    lr = [training.warmup_cosine(s, 100, 10) for s in range(100)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:])) and lr[-1] < 0.01


def test_train_config_from_toml_and_overrides():
    cfg = training.TrainConfig.for_model("almt", epochs=3, audio_dropout=0.2)
    table = registry.load_train_config("almt")
    assert cfg.lr == table["lr"] and cfg.batch_size == table["batch_size"] and cfg.epochs == 3
    assert cfg.audio_dropout == 0.2 and cfg.loss == table["loss"]


# --------------------------------------------------------------------------- MMSA pickle
def _mmsa_split(n: int, rng: np.random.Generator, aligned: bool) -> dict:
    L, La, Lv = 7, 9, 8
    if aligned:
        La = Lv = L
    t_len = rng.integers(2, L + 1, n)
    a_len = t_len if aligned else rng.integers(0, La + 1, n)
    v_len = t_len if aligned else rng.integers(1, Lv + 1, n)
    text = np.zeros((n, L, 5), np.float32)
    audio = np.zeros((n, La, 3), np.float32)
    vision = np.zeros((n, Lv, 4), np.float32)
    for i in range(n):
        text[i, : t_len[i]] = rng.normal(size=(t_len[i], 5)) + 3
        audio[i, : a_len[i]] = rng.normal(size=(a_len[i], 3)) + 3
        vision[i, : v_len[i]] = rng.normal(size=(v_len[i], 4)) + 3
    if n and a_len[0]:
        audio[0, 0, 0] = -np.inf  # MMSA sets -inf audio to 0
    tb = np.zeros((n, 3, L), np.float32)
    tb[:, 1] = np.arange(L)[None] < t_len[:, None]
    d = {
        "raw_text": np.array([f"utt {i}" for i in range(n)]),
        "id": np.array([f"vid{i % 3}$_${i}" for i in range(n)]),
        "text": text,
        "text_bert": tb,
        "audio": audio,
        "vision": vision,
        "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
        "classification_labels": np.zeros(n),
    }
    if not aligned:
        d["audio_lengths"] = list(a_len)  # MMSA stores python lists
        d["vision_lengths"] = list(v_len)
    return d, t_len, a_len, v_len


@pytest.mark.parametrize("aligned", [False, True])
def test_mmsa_pickle_loader(tmp_path, aligned):
    rng = np.random.default_rng(0)
    raw, lens = {}, {}
    for s, n in (("train", 10), ("valid", 4), ("test", 5)):
        raw[s], *lens[s] = _mmsa_split(n, rng, aligned)
    path = tmp_path / ("aligned_50.pkl" if aligned else "unaligned_50.pkl")
    with path.open("wb") as fh:
        pickle.dump(raw, fh)
    ds = data.load_dataset(path)
    assert ds.sizes() == {"train": 10, "valid": 4, "test": 5}
    assert ds.dims == ModalityDims(5, 3, 4) and ds.kind == "regression"
    for s in data.SPLITS:
        sp = ds.split(s)
        t_len, a_len, v_len = lens[s]
        np.testing.assert_array_equal(sp.text.lengths, t_len)
        np.testing.assert_array_equal(sp.audio.lengths, a_len)
        np.testing.assert_array_equal(sp.vision.lengths, v_len)
        np.testing.assert_allclose(sp.labels, raw[s]["regression_labels"])
        assert list(sp.ids) == list(raw[s]["id"]) and list(sp.raw_text) == list(raw[s]["raw_text"])
        x, y = sp.batch(np.arange(len(sp)))
        x.validate(ds.dims)
        assert torch.isfinite(x.audio).all()
        np.testing.assert_array_equal(x.text_mask.sum(1).numpy(), t_len)
        np.testing.assert_array_equal(x.audio_mask.sum(1).numpy(), a_len)
        i = int(np.argmax(t_len))
        np.testing.assert_allclose(x.text[i, : t_len[i]].numpy(), raw[s]["text"][i, : t_len[i]])
    assert float(ds.train.batch([0])[0].audio[0, 0, 0]) == 0.0  # -inf -> 0


# --------------------------------------------------------------------------- MOSI npz
def _fake_mosi_npz(path: Path, n_videos: int = 20) -> None:
    rng = np.random.default_rng(0)
    keys, vids, split = [], [], []
    for v in range(n_videos):
        for seg in range(int(rng.integers(3, 8))):
            keys.append(f"vid{v:02d}_{seg + 1}")
            vids.append(f"vid{v:02d}")
            split.append("test" if v >= 15 else "train")
    n = len(keys)
    np.savez(
        path,
        keys=np.array(keys),
        video_id=np.array(vids),
        text=np.array(["X"] * n),
        label=rng.uniform(-3, 3, n).astype(np.float32),
        text_feat=rng.normal(size=(n, 100)).astype(np.float32),
        audio_feat=rng.normal(size=(n, 73)).astype(np.float32),
        video_feat=rng.normal(size=(n, 100)).astype(np.float32),
        std_split=np.array(["train"] * n),
        declare_split=np.array(split),
    )


def _check_npz_splits(path: Path) -> data.DatasetSplits:
    raw = np.load(path)
    ds = data.load_dataset(path)
    declare = dict(zip(raw["keys"].astype(str), raw["declare_split"].astype(str)))
    assert all(declare[k] == "test" for k in ds.test.ids)
    assert all(declare[k] == "train" for k in ds.train.ids) and all(declare[k] == "train" for k in ds.valid.ids)
    assert len(ds.test) == int((raw["declare_split"] == "test").sum())
    assert len(ds.train) + len(ds.valid) == int((raw["declare_split"] == "train").sum())
    tr_v, va_v = set(ds.train.video_ids), set(ds.valid.video_ids)
    assert tr_v and va_v and not (tr_v & va_v)
    assert not ((tr_v | va_v) & set(ds.test.video_ids))
    n_train_videos = len(tr_v | va_v)
    assert len(va_v) == int(np.ceil(0.15 * n_train_videos))
    again = data.load_dataset(path)
    assert list(again.valid.ids) == list(ds.valid.ids)  # deterministic carve
    x, _ = ds.train.batch([0, 1])
    assert x.text.shape[1] == 1 and x.text_mask.all()
    return ds


def test_mosi_npz_declare_split_and_video_carve(tmp_path):
    path = tmp_path / "mosi_utterances.npz"
    _fake_mosi_npz(path)
    ds = _check_npz_splits(path)
    ctx = data.load_mosi_npz(path, context=2)
    for i in range(len(ctx.train)):
        n = int(ctx.train.text.lengths[i])
        assert 1 <= n <= 3
        np.testing.assert_allclose(ctx.train.text.get(i)[-1], ds.train.text.get(i)[0], rtol=1e-6)


@pytest.mark.skipif(not MOSI_NPZ.is_file(), reason="shared MOSI data not present")
def test_real_mosi_npz_split():
    ds = _check_npz_splits(MOSI_NPZ)
    assert len(ds.test) == 752 and ds.dims == ModalityDims(100, 73, 100)


# --------------------------------------------------------------------------- transcripts
class _FakeEncoder:
    dim = 4
    calls = 0

    def encode(self, text):
        type(self).calls += 1
        n = len(text.split()) + 2

        class E:
            tokens = np.full((n, 4), float(len(text)), np.float32)
            pooled = tokens[0]

        return E()


def test_mosi_text_loader_caches_and_masks_av(tmp_path):
    csv = tmp_path / "t.csv"
    rows = ["id,video_id,text,label,std_split,declare_split"]
    for i, s in enumerate(["train"] * 5 + ["valid"] * 2 + ["test"] * 3):
        rows.append(f"v{i}_1,v{i},WORD {'X ' * i}END,{(i - 4) / 2:.1f},{s},train")
    csv.write_text("\n".join(rows) + "\n")
    ident = {"impl": "fake", "model_dir": "x", "max_tokens": 8}
    ds = data.load_mosi_text(csv, 7, 5, encoder=_FakeEncoder(), identity=ident, cache_dir=tmp_path, progress=False)
    assert ds.sizes() == {"train": 5, "valid": 2, "test": 3} and ds.dims == ModalityDims(4, 7, 5)
    x, y = ds.test.batch(np.arange(3))
    assert not x.audio_mask.any() and not x.vision_mask.any()
    assert x.audio.shape == (3, 1, 7) and x.vision.shape == (3, 1, 5)
    assert list(x.text_mask.sum(1).numpy()) == [len(t.split()) + 2 for t in ds.test.raw_text]
    calls = _FakeEncoder.calls
    assert len(list(tmp_path.glob("mosi_text_*.npz"))) == 1
    again = data.load_mosi_text(csv, 7, 5, encoder=_FakeEncoder(), identity=ident, cache_dir=tmp_path, progress=False)
    assert _FakeEncoder.calls == calls  # served from the cache
    np.testing.assert_array_equal(again.test.text.flat, ds.test.text.flat)
    other = data.load_mosi_text(
        csv, 7, 5, encoder=_FakeEncoder(), identity={**ident, "max_tokens": 4}, cache_dir=tmp_path, progress=False
    )
    assert _FakeEncoder.calls > calls and len(list(tmp_path.glob("mosi_text_*.npz"))) == 2
    assert len(other.train) == 5


# --------------------------------------------------------------------------- live trainer pieces
def test_live_augment_shapes_like_live_windows():
    from sentistream.models import augmentation as lt

    dims = ModalityDims(6, 5, 4)
    rng = np.random.default_rng(0)
    pool = lt.AVPool(
        audio=[rng.normal(size=(400, 5)).astype(np.float32)],
        vision=[rng.normal(size=(120, 4)).astype(np.float32)],
        audio_mean=np.zeros(5, np.float32),
        audio_std=np.ones(5, np.float32),
        vision_scale=np.full(4, 0.1, np.float32),
        vision_mean=np.zeros(4, np.float32),
        info={},
    )
    aug = lt.AVAugment(pool, dims, batch_prob=1.0, empty_text_prob=0.5, audio_frames=60, vision_frames=45)
    ds = _synthetic(32, dims)
    x, y = ds.train.batch(np.arange(32))
    g = torch.Generator().manual_seed(0)
    x2, y2 = aug(x, y.clone(), g)
    x2.validate(dims)
    assert x2.audio.shape[1] <= 60 and x2.vision.shape[1] <= 45
    assert x2.audio_mask.any(1).all() and x2.vision_mask.any(1).all()
    empty = ~x2.text_mask.any(1)
    assert 0 < int(empty.sum()) < 32 and float(y2[empty].abs().sum()) == 0.0
    assert torch.equal(y2[~empty], y[~empty])
    np.testing.assert_allclose(
        lt.bin_frames(np.arange(10, dtype=np.float32)[:, None], 5)[:, 0], [0.5, 2.5, 4.5, 6.5, 8.5]
    )


def test_load_run_config_layers_user_toml(tmp_path):
    user = tmp_path / "u.toml"
    user.write_text("d = 32\n[train]\nlr = 0.5\n")
    hp, cfg = training.load_run_config("almt", str(user), epochs=2)
    assert hp["d"] == 32 and hp["tokens"] == registry.load_hparams("almt")["tokens"]
    assert cfg.lr == 0.5 and cfg.epochs == 2


def test_live_asr_copies_real_speech_and_whisper(tmp_path):
    """train-live's ASR copies: real espeak-ng speech read by the engine's real Whisper, cached,
    then appended to the train split with the same labels."""
    from sentistream.models import augmentation as lt
    from sentistream.perception.wer import wer

    texts = ["i really love this movie it is wonderful", "the acting was terrible and boring"]
    hyps, info = lt.asr_transcripts(texts, tmp_path, seed=0)
    assert len(hyps) == 2 and wer(texts, hyps) <= 0.35, hyps
    assert list(tmp_path.glob("live_asr_text_*.npz")) and info["voices"]
    again, _ = lt.asr_transcripts(texts, tmp_path, seed=0)  # from the cache: same words
    assert again == hyps

    split = data.SplitData(
        data.SequenceStore.from_list([np.ones((3, 4), np.float32), np.ones((2, 4), np.float32)], 4),
        data.SequenceStore.empty(2, 5),
        data.SequenceStore.empty(2, 3),
        np.array([1.5, -2.0], np.float32),
        np.array(["a", "b"]),
        raw_text=np.array(texts),
    )
    both = lt.with_asr_copies(split, hyps, _FakeEncoder(), {"impl": "fake"}, tmp_path, progress=False)
    assert len(both) == 4 and list(both.labels) == [1.5, -2.0, 1.5, -2.0]
    assert list(both.ids) == ["a", "b", "a#asr", "b#asr"] and list(both.raw_text[2:]) == hyps
    assert [len(both.text.get(i)) for i in range(4)] == [3, 2] + [len(h.split()) + 2 for h in hyps]
    assert not both.audio.lengths.any() and not both.vision.lengths.any()


def _run(seed: int, valid: dict[str, float]) -> training.TrainResult:
    return training.TrainResult(
        model=None,
        valid=valid,
        test={},
        best_epoch=1,
        epochs_run=1,
        history=[],
        config=training.TrainConfig(),
        seed=seed,
        seconds=0.0,
    )


@pytest.mark.parametrize(
    "metric, values, best",
    [
        ("loss", [0.9, 0.2, 0.5], 1),  # lower is better (the seed with the highest loss was saved before)
        ("mae", [0.9, 0.2, float("nan")], 1),  # a NaN is never the best
        ("acc2_non0", [0.7, 0.8, 0.75], 1),  # higher is better
        ("corr", [float("nan"), 0.1, 0.3], 2),
    ],
)
def test_best_of_seeds_follows_the_metric_direction(metric, values, best):
    runs = [_run(i, {metric: v}) for i, v in enumerate(values)]
    assert training.best_of_seeds(runs, metric).seed == best


def test_best_of_seeds_refuses_an_unknown_metric():
    with pytest.raises(ValueError, match="unknown select_metric"):
        training.best_of_seeds([_run(0, {"x": 1.0})], "x")


def test_a_plateau_decay_that_could_never_fire_is_refused():
    with pytest.raises(ValueError, match="plateau_patience"):
        training.TrainConfig(scheduler="plateau", patience=8, plateau_patience=20)
    training.TrainConfig(scheduler="plateau", patience=0, plateau_patience=20)  # no early stopping: fine
    assert training.TrainConfig.for_model("mult").plateau_patience < training.TrainConfig.for_model("mult").patience


def test_zoo_configs_carry_the_papers_mosi_settings():
    kuda = registry.load_hparams("kuda")
    assert kuda["ratio_k"] == 2.0 and kuda["fusion_layers"] == 2  # KuDA, MOSI (CH-SIMS: 0.1, 3)
    assert training.TrainConfig.for_model("msfn").loss == "mse"  # MSFN eq. 15: squared L2 task loss
