"""`sentistream doctor`: cameras, microphones, models, backends, GPU; rich tables and --json."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import sentistream_cmd

from sentistream.engine import doctor


@pytest.fixture(scope="module")
def report():
    proc = subprocess.run(sentistream_cmd("doctor", "--json"), capture_output=True, text=True, timeout=180)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    data["_code"] = proc.returncode
    return data


def test_json_report_has_every_section(report):
    assert {"cameras", "microphones", "models", "backends", "gpu", "platform", "ok", "problems"} <= set(report)
    assert report["_code"] == (0 if report["ok"] else 1)
    assert isinstance(report["cameras"], list)
    assert report["microphones"]["status"] in ("ok", "none", "error")
    assert report["gpu"]["status"] in ("ok", "none", "error")


def test_models_found_in_this_install(report):
    models = {m["name"]: m for m in report["models"]}
    assert set(models) - {"text_finetune"} == {"whisper", "text_encoder", "mediapipe", "fusion_checkpoint"}
    # the venv carries all of them (pyproject pins the packages)
    for name in ("whisper", "text_encoder", "mediapipe"):
        assert models[name]["status"] == "ok", models[name]
        assert os.path.isdir(models[name]["path"])
    from sentistream.models.live import shipped_checkpoint_path
    from sentistream.perception.asr import default_model_dir as asr_dir
    from sentistream.perception.text import default_model_dir as text_dir

    assert models["whisper"]["path"] == asr_dir() and models["text_encoder"]["path"] == text_dir()
    assert models["mediapipe"]["version"] == "0.10.21"
    assert models["fusion_checkpoint"]["path"] == str(shipped_checkpoint_path())
    assert models["fusion_checkpoint"]["status"] == ("ok" if shipped_checkpoint_path().is_file() else "warn")
    from sentistream.models.registry import read_checkpoint_metadata

    if shipped_checkpoint_path().is_file() and read_checkpoint_metadata(shipped_checkpoint_path())["meta"].get(
        "text_finetune"
    ):  # the shipped model reads fine-tuned text layers: they are beside it
        assert models["text_finetune"]["status"] == "ok", models["text_finetune"]
    assert report["ok"] and report["_code"] == 0


def test_backends_and_gpu(report):
    backends = {b["name"]: b for b in report["backends"]}
    import torch

    assert backends["torch"]["version"] == torch.__version__
    assert backends["torch"]["cuda_available"] == torch.cuda.is_available()
    assert backends["torch_tensorrt"]["status"] in ("ok", "none")
    assert "CPUExecutionProvider" in backends["onnxruntime"]["providers"]
    assert backends["ctranslate2"]["status"] == "ok"
    if shutil.which("nvidia-smi") is None:
        assert report["gpu"]["status"] == "none" and "nvidia-smi" in report["gpu"]["detail"]


def test_rich_tables(report, capsys):
    doctor.render(report)
    out = capsys.readouterr().out
    for title in ("Cameras", "Microphones", "Models", "Backends", "GPU", "whisper", "onnxruntime"):
        assert title in out
    assert "sentistream[tensorrt]" in out or "torch_tensorrt" in out  # data is not eaten as rich markup


def test_missing_portaudio_is_reported_not_raised(monkeypatch):
    class NoPortAudio:
        def find_spec(self, name, path=None, target=None):
            if name == "sounddevice":
                raise OSError("PortAudio library not found")

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoPortAudio(), *sys.meta_path])
    mics = doctor.list_microphones()
    assert mics["status"] == "error" and "libportaudio2" in mics["detail"] and mics["devices"] == []


def test_cameras_probe_each_device(monkeypatch):
    opened = []

    class FakeCapture:
        def __init__(self, index, api=None):
            opened.append(index)
            self.index = index

        def isOpened(self):
            return self.index == 0

        def read(self):
            import numpy as np

            return True, np.zeros((480, 640, 3), np.uint8)

        def get(self, prop):
            return 30.0

        def release(self):
            pass

    import cv2

    monkeypatch.setattr(doctor.glob, "glob", lambda pattern: ["/dev/video2", "/dev/video0"])
    monkeypatch.setattr(cv2, "VideoCapture", FakeCapture)
    cams = doctor.list_cameras()
    assert [c["device"] for c in cams] == ["/dev/video0", "/dev/video2"] and opened == [0, 2]
    assert cams[0]["status"] == "ok" and (cams[0]["width"], cams[0]["height"]) == (640, 480)
    assert "webcam:0" in cams[0]["detail"] and cams[1]["status"] == "error"
    assert [c["status"] for c in doctor.list_cameras(open_devices=False)] == ["ok", "ok"]


def test_gpu_from_nvidia_smi(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '0, NVIDIA H100 80GB HBM3, 81559, 1024, 550.54.15, 7'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpu = doctor.gpu_info()
    assert gpu["status"] == "ok"
    assert gpu["gpus"] == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559.0,
                            "memory_used_mib": 1024.0, "driver": "550.54.15", "utilization_pct": 7.0}]  # fmt: skip
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert doctor.gpu_info()["status"] == "error"


def test_missing_required_model_fails(tmp_path, capsys):
    conf = tmp_path / "bad.toml"
    conf.write_text(f'[asr]\nmodel_dir = "{tmp_path / "nowhere"}"\n')
    code = doctor.cmd_doctor(argparse.Namespace(json=True, no_open=True, config=str(conf)))
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and not data["ok"]
    assert data["problems"] == ["required model missing: whisper"]
    whisper = next(m for m in data["models"] if m["name"] == "whisper")
    assert whisper["status"] == "missing" and "asr.model_dir" in whisper["detail"]


def test_doctor_is_a_cli_subcommand():
    from sentistream import cli

    assert doctor.register in cli._registrars()
    args = cli.build_parser().parse_args(["doctor", "--json", "--no-open"])
    assert args.func is doctor.cmd_doctor and args.json and args.no_open
    run = cli.build_parser().parse_args(["run", "--dashboard"])
    assert run.dashboard == ""  # -> 127.0.0.1:8765
    assert cli.build_parser().parse_args(["run"]).dashboard is None
