"""`sentistream bench accuracy`: how well the fusion zoo and the shipped live model predict sentiment.

Writes ``bench/results/accuracy.json`` and ``accuracy.md``. The JSON is keyed
``{suite: {model: {metric: mean, metric + "_std": std}}}`` (MMSA metrics on the *test* split, after
model selection on the *validation* split only; accuracies / F1 as fractions in [0, 1]); everything
else (exact command of every figure, data, seeds, validation metrics, machine, date) sits under the
top-level ``"meta"`` key, ``meta[suite]`` for the suite and ``meta[suite]["models"][model]`` per model.
Runs *merge* into an existing accuracy.json (under a file lock), so suites and models may be run
separately or in parallel processes; ``--fresh`` starts a new file.

Suites
------
One module each (``bench/accuracy_utterance.py``, ``accuracy_text.py``, ``accuracy_spoken.py``); the
results file, the report and issue 4's reference figures and goals are in ``accuracy_common.py``.

``mosi_utterance``
    The shared per-utterance MOSI features (text-CNN 100, openSMILE 73, 3D-CNN 100), **declare-lab
    split only** (validation = 15 % of the declare-train videos, carved by video; see
    ``models.data.load_mosi_npz``). Context: each utterance is the sequence of up to ``K`` *earlier*
    utterances of the same video followed by itself (causal: the live engine cannot see the future;
    :func:`~sentistream.bench.accuracy_utterance.check_causal_context` verifies it on the loaded data and the result goes into the JSON).
    With ``K > 0`` every step gets one extra input channel, 1 on the current utterance and 0 on the
    context ones, so models that pool over the sequence can tell them apart. ``K`` is chosen per
    model on validation (criterion: the model's ``select_metric``, MAE by default) with the first
    seed; the chosen ``K``'s run is that seed's run, the other seeds follow at the same ``K``.
    Caveat (measured, reported in the JSON): the text and video extractors were trained on all of
    declare-train, so the carved validation split is *leaky* (validation Acc-2 near 99 %); model
    selection on it is still the only selection the data rules allow.
    Ensembles: ``--ensemble N`` adds ``<model>_ensN`` (N seeds of one model averaged);
    ``--zoo-ensemble topN`` adds ``zoo_ens_<members>`` (the N zoo models with the lowest recorded
    valid MAE, each at its recorded ``K``, averaged per seed).
    Refit: ``--refit`` scores, instead of each selected run, the same model retrained (same seed,
    configuration and ``K``) on train + valid for the epochs that run's early stopping chose
    (:func:`~sentistream.models.training.refit_model`); row ``<model>[_ensN]_refit``. Selection still
    reads validation only; the refit adds the 240 carved rows back to training.
``mosi_text``
    MOSI transcripts with the standard CMU-SDK folds (``std_split``), encoded by the engine's own
    text encoder (frozen all-MiniLM-L6-v2 token embeddings, ``perception.text.TextEncoder``).
    Models: ``ridge`` (the pooled sentence vector + ridge, alpha on valid: the issue's floor),
    ``mlp`` (masked mean of the token embeddings -> MLP), ``minilm_ft`` (the MiniLM encoder itself
    fine-tuned on the train fold, mean-pool + linear head, epoch chosen on valid), and every zoo
    model's text branch (the zoo model trained with audio / vision absent: all-``False`` masks).
``mosi_spoken``
    The std-test transcripts read by espeak-ng, transcribed by the real ASR (faster-whisper tiny.en
    through ``perception.asr``; batch per utterance by default, ``--asr streaming`` runs the
    streaming recogniser over one long stream), then the engine's text encoder and the shipped
    live model (``models/live_model.safetensors``) through :class:`~sentistream.models.live.LiveModel`
    exactly as the engine feeds it (token embeddings, audio frames averaged into
    ``max_audio_frames`` steps and normalised with the checkpoint's statistics, score clipped to
    [-3, 3]). One window per utterance: its whole transcript and its whole audio. Rows:
    ``live_ref_text`` (reference transcript, text only: the mosi_text figure of the live model on the
    same utterances), ``live_asr_text`` (ASR transcript, audio and vision absent) and
    ``live_asr_text_audio`` (ASR transcript + the real audio features of the spoken utterance,
    vision absent: a voice-only session) and the diagnostic ``live_asr_plain_text`` (the ASR
    transcript written like the training transcripts: upper case, no punctuation or apostrophes;
    it separates transcript *format* from word errors), and ``live_asr_text_gapped`` (the same
    texts spoken with short pauses between words, ``GAPPED_WORD_GAP``: espeak's run-together words
    are harder for Whisper than a person's; the default-speech rows stay); ASR rows also carry ``wer``. Skipped (recorded as
    ``"skipped: no shipped model"``) when the checkpoint does not exist.

``--quick``: one seed, two epochs, two models per suite, a subsample of every split (tests).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .accuracy_common import (
    DEFAULT_CHECKPOINT,
    DEFAULT_CSV,
    DEFAULT_EPOCH_CAP,
    DEFAULT_MODELS,
    DEFAULT_NPZ,
    FT_EPOCHS,
    MLP_EPOCHS,
    QUICK_MODELS,
    RESULTS,
    SPOKEN_ROWS,
    SUITES,
    TEXT_HEADS,
    ZOO,
    say,
)
from .accuracy_spoken import suite_spoken
from .accuracy_text import suite_text
from .accuracy_utterance import suite_utterance, utterance_zoo_ensemble


# --------------------------------------------------------------------------- CLI
def _command_line() -> str:
    argv = sys.argv[1:]
    if argv and argv[0] == "bench":
        return "sentistream " + " ".join(shlex.quote(a) for a in argv)
    return "sentistream bench accuracy " + " ".join(shlex.quote(a) for a in argv)


def run(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    bad = [s for s in suites if s not in SUITES]
    if bad:
        raise SystemExit(f"unknown suite(s) {bad}; choose from {', '.join(SUITES)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip() != ""]
    if args.quick:
        seeds = seeds[:1]
        args.epochs = args.epochs or 2
        args.subsample_n = args.subsample or 240
        if args.contexts == "0,4,8":
            args.contexts = "0,2"
    else:
        args.subsample_n = args.subsample
    command = args.command_line or _command_line()
    t0 = time.perf_counter()
    for suite in suites:
        models = (
            [m.strip().lower() for m in args.models.split(",") if m.strip()]
            if args.models
            else list(QUICK_MODELS[suite] if args.quick else DEFAULT_MODELS[suite])
        )
        if args.models:  # --models applies to each suite; keep the names that suite knows
            known = set(DEFAULT_MODELS[suite])
            models = [m for m in models if m in known]
            if not models:
                continue
        seeds_text = "" if suite == "mosi_spoken" else f", seeds {seeds}"  # spoken: one deterministic pass
        say(f"suite {suite}: models {models}{seeds_text}")
        if suite == "mosi_utterance":
            if args.zoo_ensemble:
                utterance_zoo_ensemble(args, seeds, command)
            else:
                suite_utterance(args, models, seeds, command)
        elif suite == "mosi_text":
            suite_text(args, models, seeds, command)
        else:
            suite_spoken(args, models, command)
    say(f"done in {time.perf_counter() - t0:.0f} s; results in {Path(args.out) / 'accuracy.json'}")
    return 0


def cmd_accuracy(args) -> int:
    return run(args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suites", default=",".join(SUITES), help="comma list of " + ", ".join(SUITES))
    p.add_argument(
        "--models",
        default="",
        help="comma list; applies to every suite, each keeping the names it knows "
        f"(mosi_utterance: {', '.join(ZOO)}; mosi_text: {', '.join(TEXT_HEADS + ZOO)}; "
        f"mosi_spoken: {', '.join(SPOKEN_ROWS)}); default: all",
    )
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma list of seeds (quick: the first)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"zoo models: epochs per run = min(this, configured) (default {DEFAULT_EPOCH_CAP}); "
        f"mlp: epochs (default {MLP_EPOCHS})",
    )
    p.add_argument(
        "--contexts",
        default="0,4,8",
        help="mosi_utterance: context lengths K tried on valid per model (quick: 0,2); "
        "'shared' = the K with the lowest mean valid MAE over the models already swept "
        "in accuracy.json",
    )
    p.add_argument(
        "--ensemble",
        type=int,
        default=1,
        help="mosi_utterance: N > 1 adds a row <model>_ensN, the mean score of N models "
        "trained with different seeds, for each seed (default 1: single models)",
    )
    p.add_argument(
        "--zoo-ensemble",
        default="",
        metavar="topN|M1,M2,..",
        help="mosi_utterance: instead of single models, a row zoo_ens_<members>: the mean score of "
        "different zoo models (topN: the N with the lowest recorded valid MAE), each at its "
        "recorded K, per seed",
    )
    p.add_argument(
        "--refit",
        action="store_true",
        help="mosi_utterance: retrain each selected run on train + valid for its chosen epochs "
        "and score that on test (row <name>[_ensN]_refit)",
    )
    p.add_argument("--ft-epochs", type=int, default=None, help=f"minilm_ft epochs (default {FT_EPOCHS})")
    p.add_argument("--ft-lr", type=float, default=5e-5, help="minilm_ft encoder learning rate")
    p.add_argument("--npz", default=str(DEFAULT_NPZ), help="mosi_utterances.npz")
    p.add_argument("--transcripts", default=str(DEFAULT_CSV), help="mosi_transcripts.csv")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="live model for mosi_spoken")
    p.add_argument("--asr", choices=("batch", "streaming"), default="batch", help="mosi_spoken ASR mode")
    p.add_argument(
        "--spoken-utterances",
        type=int,
        default=None,
        help="mosi_spoken: first N std-test utterances (default all; quick 4)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch / ASR threads")
    p.add_argument(
        "--quick", action="store_true", help="tests: 1 seed, 2 epochs, 2 models per suite, subsampled splits"
    )
    p.add_argument("--subsample", type=int, default=None, help="train rows kept (valid n/3, test n/2)")
    p.add_argument("--progress", action="store_true", help="per-epoch progress bars")
    p.add_argument("--fresh", action="store_true", help="start a new accuracy.json instead of merging")
    p.add_argument("--command-line", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(RESULTS), help="results folder")


def register(bench_subparsers) -> None:
    p = bench_subparsers.add_parser(
        "accuracy",
        help="MOSI accuracy of the zoo (utterance features, transcripts) and the live model (spoken test utterances)",
    )
    add_arguments(p)
    p.set_defaults(func=cmd_accuracy)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sentistream bench accuracy")
    add_arguments(p)
    args = p.parse_args(argv)
    if argv is not None and not args.command_line:
        args.command_line = "sentistream bench accuracy " + " ".join(shlex.quote(str(a)) for a in argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
