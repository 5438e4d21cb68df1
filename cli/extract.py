"""`sentistream extract`: the live features of media files, offline, as an MMSA-style pickle."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..perception.extract import ClipSpec, clips_from_csv, clips_from_folder, extract


def cmd_extract(args) -> int:
    from ..engine.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    src = Path(args.input)
    try:
        if src.is_dir():
            clips = clips_from_folder(src, args.split)
        elif src.suffix.lower() == ".csv":
            clips = clips_from_csv(src)
        elif src.is_file():
            clips = [ClipSpec(src.stem, str(src), split=args.split)]
        else:
            print(f"error: {src} is neither a folder, a label CSV nor a media file", file=sys.stderr)
            return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not clips:
        print(f"error: no media files found in {src}", file=sys.stderr)
        return 2
    report = extract(clips, Path(args.out), config, progress=not args.quiet)
    for path, why in report["failed"]:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(json.dumps({k: v for k, v in report.items() if k != "failed"} | {"failed": len(report["failed"])}))
    return 0 if report["extracted"] else 1


def register_extract(subparsers) -> None:
    p = subparsers.add_parser("extract", help="extract features from media files into an MMSA dataset pickle")
    p.add_argument("input", help="a folder of media files, a label CSV (path,start,end,label,split) or one file")
    p.add_argument("--out", required=True, help="the dataset pickle to write (MMSA layout)")
    p.add_argument("--split", default="test", help="split name for a folder or a single file (default: test)")
    p.add_argument("--config", default=None, help="engine TOML (the same [face]/[audio_features]/[asr]/[text])")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract)
