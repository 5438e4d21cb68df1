"""`sentistream train` (any zoo model on any supported dataset), `train-live`, `train-text` and
`train-voice`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_train(args) -> int:
    import tomllib

    from ..models import registry
    from ..models.data import load_dataset
    from ..models.training import TrainConfig, best_of_seeds, train_seeds

    if args.model not in registry.available():
        print(f"error: unknown model {args.model!r} (available: {', '.join(registry.available())})", file=sys.stderr)
        return 2
    try:
        data = load_dataset(args.data)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot load {args.data}: {exc}", file=sys.stderr)
        return 2
    overrides: dict = {}
    hparams: dict = {}
    if args.config:
        table = tomllib.loads(Path(args.config).read_text())
        overrides.update(table.pop("train", {}))
        hparams.update(table)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    cfg = TrainConfig.for_model(args.model, **overrides)
    if cfg.unknown_keys:
        print(f"error: unknown [train] key(s): {', '.join(cfg.unknown_keys)}", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    result = train_seeds(args.model, data, cfg, seeds=seeds, hparams=hparams or None)
    summary = {"model": args.model, "data": str(args.data), "seeds": seeds, "valid": result.valid, "test": result.test}
    if args.out:
        best = best_of_seeds(result.results, cfg.select_metric)
        registry.save_checkpoint(
            best.model,
            args.out,
            meta={
                "data": str(args.data),
                "seed": best.seed,
                "valid": best.valid,
                "test": best.test,
                "normalisation": getattr(data, "normalisation", None) or {},
            },
        )
        summary["checkpoint"] = str(args.out)
    print(json.dumps(summary, indent=2))
    return 0


#: Commands whose options all belong to their trainer: cli.main hands them the rest of the command
#: line before argparse sees it (so `train-live --help` is the trainer's help). name -> help.
PASSTHROUGH_HELP = {
    "train-live": "train the shipped live model (see models/MODEL_CARD.md)",
    "train-text": "fine-tune the text encoder's top layers for the live model (then train-live)",
    "train-voice": "train the voice valence head on RAVDESS, speaker-independent (models/affect/)",
}
PASSTHROUGH_COMMANDS = tuple(PASSTHROUGH_HELP)


def run_passthrough(command: str, argv: list[str]) -> int:
    """The one dispatch of ``train-live`` / ``train-text`` / ``train-voice``."""
    if command == "train-live":
        from ..models.live_training import main
    elif command == "train-text":
        from ..models.text_finetune import main
    elif command == "train-voice":
        from ..models.voice_training import main
    else:
        raise ValueError(f"not a pass-through command: {command!r}")
    return int(main(argv) or 0)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a zoo model (MMSA pickle, MOSI npz, MOSI transcripts, extract output)"
    )
    p.add_argument("--model", required=True, help="registry name: almt, kuda, msfn, mldfa, tfn, lmf, mult")
    p.add_argument("--data", required=True, help="an MMSA/extract .pkl, the MOSI .npz or mosi_transcripts.csv")
    p.add_argument("--config", default=None, help="TOML: hyper-parameters at top level, a [train] table")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (mean ± std is reported)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--out", default="", help="save the seed best on validation as .safetensors")
    p.set_defaults(func=cmd_train)
    for name, help_text in PASSTHROUGH_HELP.items():
        sub = subparsers.add_parser(name, help=help_text, add_help=False)
        sub.add_argument("rest", nargs=argparse.REMAINDER, help=f"the arguments of {name} (--help for them)")
        sub.set_defaults(func=lambda args, name=name: run_passthrough(name, args.rest))
