"""`sentistream bench accuracy --quick` on a subsample: JSON structure, key names, markdown."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sentistream.bench import accuracy, accuracy_common, accuracy_utterance

NPZ = accuracy.DEFAULT_NPZ
CSV = accuracy.DEFAULT_CSV

needs_data = pytest.mark.skipif(not (NPZ.is_file() and CSV.is_file()), reason="shared MOSI data not found")


def _minilm_available() -> bool:
    try:
        from sentistream.perception.text import default_model_dir

        return os.path.isfile(os.path.join(default_model_dir(), "config.json"))
    except (ImportError, OSError):
        return False


@needs_data
def test_quick_mode_structure(tmp_path: Path) -> None:
    suites = ["mosi_utterance", "mosi_spoken"] + (["mosi_text"] if _minilm_available() else [])
    rc = accuracy.main(
        [
            "--quick",
            "--subsample",
            "90",
            "--suites",
            ",".join(suites),
            "--checkpoint",
            str(tmp_path / "missing.safetensors"),
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "accuracy.json").read_text())
    assert "meta" in data
    for suite in suites:
        assert suite in data and suite in data["meta"]
    # suite -> model -> metric (+ _std), accuracies as fractions
    expected = {
        "mosi_utterance": set(accuracy_common.QUICK_MODELS["mosi_utterance"]),
        "mosi_text": set(accuracy_common.QUICK_MODELS["mosi_text"]),
    }
    for suite, models in expected.items():
        if suite not in suites:
            continue
        assert set(data[suite]) == models
        for name, row in data[suite].items():
            for k in accuracy_common.METRICS:
                assert k in row and k + "_std" in row, (suite, name, k)
                assert isinstance(row[k], float)
            for k in ("acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc7", "acc5"):
                assert 0.0 <= row[k] <= 1.0
            assert row["mae"] >= 0
            mm = data["meta"][suite]["models"][name]
            assert mm["command"].startswith("sentistream bench accuracy")
            assert "valid" in mm and "acc2_non0" in mm["valid"]
        sm = data["meta"][suite]
        for k in ("data", "seeds", "machine", "date"):
            assert k in sm, (suite, k)
        assert sm["seeds"] == [0]
    # causal context verified, chosen K recorded
    um = data["meta"]["mosi_utterance"]
    assert all(v["violations"] == 0 for v in um["causal_check"].values())
    assert all(m["context"] in (0, 2) for m in um["models"].values())
    # no checkpoint -> the spoken suite says so and stays empty
    assert data["mosi_spoken"] == {}
    assert data["meta"]["mosi_spoken"]["status"] == "skipped: no shipped model"
    md = (tmp_path / "accuracy.md").read_text()
    assert "## mosi_utterance" in md and "floor" in md and "skipped: no shipped model" in md


@needs_data
def test_context_is_causal_and_flagged() -> None:
    ds, causal = accuracy_utterance.load_utterance_data(NPZ, 3, None)
    assert causal["violations"] == 0 and causal["sequences_checked"] == 2199
    st = ds.train.text
    assert st.dim == 101
    lens = st.lengths
    assert lens.max() == 4 and lens.min() == 1
    for i in range(0, len(st), 97):
        x = st.get(i)
        np.testing.assert_array_equal(x[:, -1], np.r_[np.zeros(len(x) - 1), 1.0])


def test_merge_keeps_other_entries(tmp_path: Path) -> None:
    row = {k: 0.5 for k in accuracy_common.METRICS} | {k + "_std": 0.0 for k in accuracy_common.METRICS}
    accuracy_common.merge_results(tmp_path, "mosi_text", {"a": row}, {"data": "x"}, {"a": {"command": "c1"}})
    accuracy_common.merge_results(tmp_path, "mosi_text", {"b": row}, {"data": "x"}, {"b": {"command": "c2"}})
    data = json.loads((tmp_path / "accuracy.json").read_text())
    assert set(data["mosi_text"]) == {"a", "b"}
    assert set(data["meta"]["mosi_text"]["models"]) == {"a", "b"}
    assert list(data)[-1] == "meta"


@needs_data
def test_seed_ensemble_row_averages_its_members(tmp_path: Path) -> None:
    rc = accuracy.main(
        [
            "--quick",
            "--subsample",
            "90",
            "--suites",
            "mosi_utterance",
            "--models",
            "lmf",
            "--contexts",
            "0",
            "--ensemble",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "accuracy.json").read_text())
    assert set(data["mosi_utterance"]) == {"lmf_ens2"}
    mm = data["meta"]["mosi_utterance"]["models"]["lmf_ens2"]
    assert mm["ensemble"]["members"] == 2
    (seed_run,) = mm["per_seed"]
    assert seed_run["member_seeds"] == [0, 1]
    # the averaged scores are a different model from either member
    member_mae = [m["test"]["mae"] for m in seed_run["members"]]
    assert seed_run["test"]["mae"] not in member_mae
    assert seed_run["test"]["mae"] <= max(member_mae) + 1e-9  # |mean error| <= mean |error| (convexity)
    assert "lmf_ens2" in (tmp_path / "accuracy.md").read_text()


@needs_data
def test_refit_row_scores_models_retrained_on_train_and_valid(tmp_path: Path) -> None:
    rc = accuracy.main(
        [
            "--quick",
            "--subsample",
            "90",
            "--suites",
            "mosi_utterance",
            "--models",
            "lmf",
            "--contexts",
            "0",
            "--refit",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "accuracy.json").read_text())
    assert set(data["mosi_utterance"]) == {"lmf_refit"}
    mm = data["meta"]["mosi_utterance"]["models"]["lmf_refit"]
    (selected,), (refit,) = mm["per_seed"], mm["refit"]["per_seed"]
    assert refit["epochs"] == selected["best_epoch"] and "train + valid" in mm["refit"]["rule"]
    assert data["mosi_utterance"]["lmf_refit"]["mae"] == pytest.approx(refit["test"]["mae"], abs=1e-5)
    assert refit["test"] != selected["test"]
    assert mm["valid"]["mae"] == pytest.approx(selected["valid"]["mae"], abs=1e-5)  # the selection's valid


def test_zoo_ensemble_members_rule() -> None:
    rec = {
        "lmf": {"valid": {"mae": 0.6}, "context": 8},
        "tfn": {"valid": {"mae": 0.62}, "context": 0},
        "msfn": {"valid": {"mae": 0.64}, "context": 0},
        "lmf_ens5": {"valid": {"mae": 0.5}, "context": 8},
        "almt": {"valid": {"mae": 0.7}, "context": 0},
    }
    members, rule = accuracy_utterance.zoo_ensemble_members("top3", rec)
    assert members == ["lmf", "tfn", "msfn"] and "lowest recorded mean valid MAE" in rule  # ensembles are no member
    assert accuracy_utterance.zoo_ensemble_members("almt,lmf", rec)[0] == ["almt", "lmf"]
    with pytest.raises(SystemExit, match="missing"):
        accuracy_utterance.zoo_ensemble_members("lmf,kuda", rec)


@needs_data
def test_zoo_ensemble_row_averages_different_models(tmp_path: Path) -> None:
    common = ["--quick", "--subsample", "90", "--suites", "mosi_utterance", "--out", str(tmp_path)]
    assert accuracy.main(common + ["--models", "lmf,msfn", "--contexts", "0,2"]) == 0
    assert accuracy.main(common + ["--zoo-ensemble", "top2"]) == 0
    data = json.loads((tmp_path / "accuracy.json").read_text())
    mm = data["meta"]["mosi_utterance"]["models"][
        "zoo_ens_"
        + "_".join(sorted(["lmf", "msfn"], key=lambda m: data["meta"]["mosi_utterance"]["models"][m]["valid"]["mae"]))
    ]
    (seed_run,) = mm["per_seed"]
    ks = {m["model"]: m["context"] for m in seed_run["members"]}
    assert ks == {m: data["meta"]["mosi_utterance"]["models"][m]["context"] for m in ("lmf", "msfn")}
    member_mae = [m["test"]["mae"] for m in seed_run["members"]]
    assert seed_run["test"]["mae"] <= max(member_mae) + 1e-9 and seed_run["test"]["mae"] not in member_mae
    assert data["meta"]["mosi_utterance"]["goal_status"].startswith("Best by acc2_non0")


@needs_data
@pytest.mark.skipif(not accuracy.DEFAULT_CHECKPOINT.is_file(), reason="no shipped live model")
def test_spoken_suite_on_the_shipped_model(tmp_path: Path) -> None:
    """Real espeak-ng speech -> real Whisper -> the shipped live model, both speech styles."""
    import shutil

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    rc = accuracy.main(
        [
            "--quick",
            "--suites",
            "mosi_spoken",
            "--spoken-utterances",
            "3",
            "--models",
            "live_ref_text,live_asr_text,live_asr_text_gapped",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "accuracy.json").read_text())
    rows, meta = data["mosi_spoken"], data["meta"]["mosi_spoken"]
    assert set(rows) == {"live_ref_text", "live_asr_text", "live_asr_text_gapped"}
    assert "wer" not in rows["live_ref_text"]
    for name in ("live_asr_text", "live_asr_text_gapped"):
        assert 0.0 <= rows[name]["wer"] < 0.6, (name, rows[name]["wer"])  # Whisper heard the words
    assert rows["live_asr_text_gapped"]["wer"] == meta["wer_gapped"]
    assert meta["utterances"] == 3 and meta["gapped_word_gap_10ms"] > 0
    assert "default speech" in meta["goal_status"] and "word gaps" in meta["goal_status"]
