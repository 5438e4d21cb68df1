"""`sentistream train` end to end on the shared MOSI features (declare split), one seed, two epochs."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import REPO, sentistream_cmd

NPZ = REPO.parent / "shared" / "data" / "mosi" / "mosi_utterances.npz"


@pytest.mark.skipif(not NPZ.is_file(), reason=f"shared data not found at {NPZ}")
def test_train_lmf_on_mosi_npz_writes_a_checkpoint(tmp_path):
    out = tmp_path / "lmf.safetensors"
    proc = subprocess.run(
        sentistream_cmd(
            "train", "--model", "lmf", "--data", str(NPZ), "--seeds", "0", "--epochs", "2", "--out", str(out)
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["test"]["acc2_non0"] > 0.6 and "acc2_non0_std" in summary["test"]
    from sentistream.models.registry import load_checkpoint

    model = load_checkpoint(out)
    assert model.name == "lmf"


def test_train_refuses_unknown_model():
    proc = subprocess.run(
        sentistream_cmd("train", "--model", "nope", "--data", "x.npz"), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "available" in proc.stderr
