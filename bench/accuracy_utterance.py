"""`bench accuracy` suite mosi_utterance: the zoo on the per-utterance MOSI features (declare-lab
split), causal context, seed / zoo ensembles and refits (see bench/accuracy.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .accuracy_common import (
    DEFAULT_EPOCH_CAP,
    ZOO,
    aggregate,
    goal_status,
    merge_results,
    rounded,
    run_stamp,
    run_summary,
    say,
    subsample_splits,
    test_row,
    utc_now,
    zoo_train_config,
)


# --------------------------------------------------------------------------- mosi_utterance
def add_current_flag(ds) -> Any:
    """Append one channel to every step of every modality: 1 on the current utterance (the last
    step of each sequence), 0 on the earlier-context steps."""
    from ..models.data import SPLITS, SequenceStore

    for s in SPLITS:
        sp = ds.split(s)
        for m in ("text", "audio", "vision"):
            st = sp.store(m)
            flag = np.zeros((st.flat.shape[0], 1), np.float32)
            lens = st.lengths
            ends = st.offsets[1:][lens > 0] - 1
            flag[ends, 0] = 1.0
            setattr(sp, m, SequenceStore(np.concatenate([st.flat, flag], axis=1), st.offsets.copy(), st.dim + 1))
    ds.info["current_flag"] = "one extra input channel: 1 = current utterance, 0 = earlier context"
    return ds


def check_causal_context(ds, npz: Path, context: int) -> dict[str, Any]:
    """Verify that each sequence is exactly [earlier utterances of its video (at most ``context``,
    in segment order) ; itself], using the raw npz (compares standardised rows up to the train
    mean / std, via the text features' argsort-free equality on a per-row basis)."""
    d = np.load(npz, allow_pickle=False)
    keys = d["keys"].astype(str)
    vids = d["video_id"].astype(str)
    seg = np.array([int(k.rsplit("_", 1)[1]) for k in keys])
    norm = ds.normalisation.get("text")
    x = np.asarray(d["text_feat"], np.float32)
    if norm:
        x = (x - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    row_of = {k: i for i, k in enumerate(keys)}
    checked = bad = 0
    for s in ("train", "valid", "test"):
        sp = ds.split(s)
        for j, key in enumerate(sp.ids):
            i = row_of[key]
            same = np.where((vids == vids[i]) & (seg < seg[i]))[0]
            same = same[np.argsort(seg[same])][-context:] if context > 0 else same[:0]
            expect = x[np.concatenate([same, [i]])]
            got = sp.text.get(j)[:, : x.shape[1]]
            checked += 1
            if got.shape != expect.shape or not np.allclose(got, expect, atol=1e-4):
                bad += 1
    return {
        "context": context,
        "sequences_checked": checked,
        "violations": bad,
        "rule": "sequence = up to K earlier utterances of the same video (segment order) + itself",
    }


def load_utterance_data(npz: Path, context: int, subsample: int | None, verify: bool = True):
    from ..models import data

    ds = data.load_mosi_npz(npz, context=context)
    causal = check_causal_context(ds, npz, context) if verify else None
    if causal and causal["violations"]:
        raise RuntimeError(f"context is not causal: {causal}")
    if context > 0:
        ds = add_current_flag(ds)
    ds = subsample_splits(ds, subsample)
    return ds, causal


def shared_context(out_dir: Path) -> dict[str, Any]:
    """The K with the lowest mean validation MAE over the models whose ``context_sweep`` (first seed,
    every K tried) is recorded in ``accuracy.json`` (validation only; the test split is not read)."""
    path = out_dir / "accuracy.json"
    if not path.is_file():
        raise SystemExit(f"--contexts shared: {path} has no K sweep yet (run some models with --contexts 0,4,8 first)")
    models = json.loads(path.read_text()).get("meta", {}).get("mosi_utterance", {}).get("models", {})
    sweeps = {m: v["context_sweep"] for m, v in models.items() if len(v.get("context_sweep", {})) > 1}
    if not sweeps:
        raise SystemExit("--contexts shared: no model with a K sweep in " + str(path))
    ks = set.intersection(*(set(s) for s in sweeps.values()))
    mean = {k: float(np.mean([s[k]["valid"]["mae"] for s in sweeps.values()])) for k in ks}
    best = min(mean, key=mean.get)
    return {
        "context": int(best),
        "rule": f"shared: lowest mean valid MAE over the K sweeps of {', '.join(sorted(sweeps))}",
        "mean_valid_mae": {k: round(v, 5) for k, v in sorted(mean.items(), key=lambda kv: int(kv[0]))},
    }


def suite_utterance(args, models: Sequence[str], seeds: Sequence[int], command: str) -> None:
    from ..models import training

    shared = shared_context(Path(args.out)) if str(args.contexts).strip() == "shared" else None
    if shared is not None:
        contexts = [shared["context"]]
        say(f"mosi_utterance: shared K = {shared['context']} ({shared['rule']})")
    else:
        contexts = [int(c) for c in str(args.contexts).split(",") if c.strip() != ""]
    epoch_cap = args.epochs or DEFAULT_EPOCH_CAP
    datasets: dict[int, Any] = {}
    causal: dict[int, Any] = {}
    for k in contexts:
        datasets[k], causal[k] = load_utterance_data(Path(args.npz), k, args.subsample_n)
    ds0 = datasets[contexts[0]]
    suite_meta = {
        "data": (
            f"{Path(args.npz).name}: per-utterance text-CNN 100 / openSMILE 73 / 3D-CNN 100 "
            f"features, declare_split only (train {ds0.sizes()['train']} / valid "
            f"{ds0.sizes()['valid']} (= {ds0.info['valid']}) / test {ds0.sizes()['test']}), "
            f"standardised with train statistics; causal context of K earlier utterances of "
            f"the same video, K chosen per model on valid (this run tried {contexts}; each model's "
            f"own sweep: meta.models.<name>.context_sweep)"
        ),
        "split": "declare_split; valid carved from declare-train by video",
        "seeds": list(seeds),
        "contexts_tried": contexts,
        "causal_check": {str(k): v for k, v in causal.items()},
        "selection": (
            "K per model by the validation criterion (select_metric, MAE by default) of its "
            "first-seed runs at each K tried, or (models run with --contexts shared) the K with "
            "the lowest mean validation MAE over the models that swept K (their context_sweep); "
            "epoch by early stopping on validation; test evaluated once per run"
        ),
        "epoch_cap": epoch_cap,
        "quick": bool(args.quick),
        "machine": run_stamp(command, args.quick),
        "date": utc_now(),
        "notes": [
            (
                "Validation is carved from declare-train, on which the text and video feature extractors "
                "were trained, so validation figures are inflated (see meta valid) and are a weak guide "
                "for selection; the test split (declare-test) is clean."
            ),
            (
                "Context uses earlier utterances only (verified: causal_check); with K > 0 a 1/0 "
                "current-utterance channel is appended to each modality."
            ),
            (
                f"Epochs per run: min({epoch_cap}, the model's configured epochs), early stopping with "
                "the configured patience; KuDA stage 1: min(configured, cap // 4)."
            ),
            "Rows ending _refit (--refit): " + REFIT_RULE + ".",
        ],
    }
    for name in models:
        t0 = time.perf_counter()
        cfg = zoo_train_config(name, epoch_cap, args.threads, args.progress)
        sweep: dict[str, Any] = {}
        first = None
        best_k, best_val = None, None
        for k in contexts:
            r = training.train_model(name, datasets[k], cfg, seed=seeds[0])
            val = r.valid[cfg.select_metric]
            say(
                f"mosi_utterance {name} K={k} seed={seeds[0]}: valid {cfg.select_metric} {val:.4f} "
                f"acc2_non0 {r.valid['acc2_non0']:.4f} (epoch {r.best_epoch}/{r.epochs_run}, "
                f"{r.seconds:.0f} s)"
            )
            sweep[str(k)] = {
                "valid": rounded(r.valid),
                "best_epoch": r.best_epoch,
                "epochs_run": r.epochs_run,
                "seconds": round(r.seconds, 1),
            }
            if best_k is None or training._is_better(cfg.select_metric, val, best_val):
                best_k, best_val, first = k, val, r
        if args.ensemble > 1:
            _utterance_ensemble(
                args,
                name,
                datasets[best_k],
                cfg,
                seeds,
                first,
                best_k,
                sweep,
                shared,
                contexts,
                suite_meta,
                command,
                t0,
            )
            continue
        runs = [first]
        for s in seeds[1:]:
            r = training.train_model(name, datasets[best_k], cfg, seed=s)
            say(
                f"mosi_utterance {name} K={best_k} seed={s}: valid {cfg.select_metric} "
                f"{r.valid[cfg.select_metric]:.4f} ({r.seconds:.0f} s)"
            )
            runs.append(r)
        row, refits = name, None
        if args.refit:
            row = f"{name}_refit"
            refits = [_refit(name, datasets[best_k], r) for r in runs]
        test = aggregate([r.test for r in (refits or runs)])
        valid = aggregate([r.valid for r in runs])  # the selected runs' (a refit trains on valid)
        say(
            f"mosi_utterance {row}: K={best_k} test acc2_non0 {test['acc2_non0']:.4f} ± "
            f"{test['acc2_non0_std']:.4f}, mae {test['mae']:.4f} ({time.perf_counter() - t0:.0f} s)"
        )
        mm = {
            "command": command,
            "date": utc_now(),
            "context": best_k,
            "seeds": list(seeds),
            "context_selection": shared
            if shared is not None
            else {"rule": f"own first-seed sweep over K in {contexts} on valid {cfg.select_metric}"},
            "context_sweep_seed": seeds[0],
            "context_sweep": sweep,
            "valid": rounded(valid),
            "dims": datasets[best_k].dims.as_dict(),
            "train_config": {k: v for k, v in cfg.as_dict().items() if k not in ("progress",)},
            "hparams": first.model.hparams,
            "per_seed": [run_summary(r) for r in runs],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        if refits:
            mm["refit"] = {"rule": REFIT_RULE, "per_seed": [_refit_summary(r) for r in refits]}
        _merge_utterance_row(args, row, test, suite_meta, mm)


REFIT_RULE = (
    "each run selected on valid as usual (K, early-stopped epoch e) is retrained with the same seed "
    "and configuration on train + valid, for e epochs of the configured LR schedule, and only that "
    "retrained model is scored on test; valid figures are the selected runs' (the refit trains on "
    "valid)"
)


def _refit(name: str, ds, selected):
    from ..models import training

    r = training.refit_model(name, ds, selected, hparams=selected.model.hparams)
    say(
        f"  refit {name} seed={selected.seed}: {r.epochs_run} epochs on train + valid, test acc2_non0 "
        f"{r.test['acc2_non0']:.4f} ({r.seconds:.0f} s)"
    )
    return r


def _refit_summary(r) -> dict[str, Any]:
    return {"seed": r.seed, "epochs": r.epochs_run, "seconds": round(r.seconds, 1), "test": rounded(r.test)}


def _merge_utterance_row(
    args, row: str, test: dict[str, float], suite_meta: dict[str, Any], model_meta: dict[str, Any]
) -> None:
    """One mosi_utterance row into accuracy.json, then the suite's goal status over all its rows."""
    data = merge_results(
        Path(args.out), "mosi_utterance", {row: test_row(test)}, suite_meta, {row: model_meta}, fresh=args.fresh
    )
    args.fresh = False
    gs = goal_status("mosi_utterance", data["mosi_utterance"])
    merge_results(Path(args.out), "mosi_utterance", {}, {**suite_meta, "goal_status": gs}, {})


def _utterance_ensemble(args, name, ds, cfg, seeds, first, k, sweep, shared, contexts, suite_meta, command, t0) -> None:
    """Row ``<name>_ens<N>``: per seed s, N members trained with seeds 100 s + j (each selected on
    valid as usual) whose test scores are averaged; mean +- std of that over the seeds."""
    from ..models import training
    from ..models.metrics import regression_metrics

    n = args.ensemble
    row = f"{name}_ens{n}" + ("_refit" if args.refit else "")
    per_seed, tests, valids = [], [], []
    for s in seeds:
        members = []
        for j in range(n):
            seed = 100 * s + j
            r = first if (first is not None and seed == first.seed) else training.train_model(name, ds, cfg, seed=seed)
            members.append(r)
        pv = np.mean([training.predict(r.model, ds.valid, max_len=cfg.max_len) for r in members], axis=0)
        scored = [_refit(name, ds, r) for r in members] if args.refit else members
        pt = np.mean([training.predict(r.model, ds.test, max_len=cfg.max_len) for r in scored], axis=0)
        valid = regression_metrics("mosi", pv, ds.valid.labels)
        test = regression_metrics("mosi", pt, ds.test.labels)
        say(
            f"mosi_utterance {row} K={k} seed={s}: valid mae {valid['mae']:.4f}, members' test acc2_non0 "
            f"{[round(r.test['acc2_non0'], 4) for r in scored]}"
        )
        valids.append(valid)
        tests.append(test)
        per_seed.append(
            {
                "seed": s,
                "member_seeds": [r.seed for r in members],
                "valid": rounded(valid),
                "test": rounded(test),
                "members": [run_summary(r) for r in members],
            }
            | ({"refits": [_refit_summary(r) for r in scored]} if args.refit else {})
        )
    test, valid = aggregate(tests), aggregate(valids)
    say(
        f"mosi_utterance {row}: K={k} test acc2_non0 {test['acc2_non0']:.4f} +- {test['acc2_non0_std']:.4f}, "
        f"mae {test['mae']:.4f} ({time.perf_counter() - t0:.0f} s)"
    )
    mm = {
        "command": command,
        "date": utc_now(),
        "context": k,
        "seeds": list(seeds),
        "ensemble": {
            "members": n,
            "rule": "mean of the members' scores; member j of seed s has seed "
            "100 s + j; each member early-stopped on valid",
        },
        "context_selection": shared
        if shared is not None
        else {"rule": f"own first-seed sweep over K in {contexts} on valid {cfg.select_metric}"},
        "context_sweep": sweep,
        "valid": rounded(valid),
        "dims": ds.dims.as_dict(),
        **({"refit": {"rule": REFIT_RULE}} if args.refit else {}),
        "train_config": {kk: v for kk, v in cfg.as_dict().items() if kk not in ("progress",)},
        "hparams": first.model.hparams,
        "per_seed": per_seed,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _merge_utterance_row(args, row, test, suite_meta, mm)


def zoo_ensemble_members(spec: str, recorded: dict[str, Any]) -> tuple[list[str], str]:
    """``topN``: the N zoo models with the lowest recorded mean valid MAE (their own runs in
    accuracy.json; validation only), or an explicit comma list of recorded models."""
    singles = {m: v for m, v in recorded.items() if m in ZOO and "valid" in v and "context" in v}
    if spec.startswith("top"):
        n = int(spec[3:] or 3)
        by_mae = sorted(singles, key=lambda m: singles[m]["valid"]["mae"])
        members = by_mae[:n]
        ranked = ", ".join(f"{m} {singles[m]['valid']['mae']:.3f}" for m in by_mae)
        rule = f"the {n} zoo models with the lowest recorded mean valid MAE ({ranked})"
    else:
        members = [m.strip() for m in spec.split(",") if m.strip()]
        rule = "members given on the command line"
    missing = [m for m in members if m not in singles]
    if missing or len(members) < 2:
        raise SystemExit(
            f"--zoo-ensemble {spec}: needs >= 2 zoo models with recorded mosi_utterance runs "
            f"(missing: {missing or 'members'}; run them first)"
        )
    return members, rule


def utterance_zoo_ensemble(args, seeds: Sequence[int], command: str) -> None:
    """Row ``zoo_ens_<members>``: per seed s, each member trained with seed s at its own recorded K
    (early-stopped on valid as usual); the members' test scores are averaged; mean +- std over seeds."""
    from ..models import training
    from ..models.metrics import regression_metrics

    path = Path(args.out) / "accuracy.json"
    recorded = (
        json.loads(path.read_text()).get("meta", {}).get("mosi_utterance", {}).get("models", {})
        if path.is_file()
        else {}
    )
    members, rule = zoo_ensemble_members(str(args.zoo_ensemble), recorded)
    ks = {m: int(recorded[m]["context"]) for m in members}
    datasets = {k: load_utterance_data(Path(args.npz), k, args.subsample_n)[0] for k in sorted(set(ks.values()))}
    first = datasets[min(datasets)]
    for ds in datasets.values():  # the same rows in the same order whatever K
        assert np.array_equal(ds.test.ids, first.test.ids) and np.array_equal(ds.valid.ids, first.valid.ids)
    epoch_cap = args.epochs or DEFAULT_EPOCH_CAP
    row = "zoo_ens_" + "_".join(members)
    t0 = time.perf_counter()
    tests, valids, per_seed = [], [], []
    for s in seeds:
        pv, pt, summaries = [], [], []
        for m in members:
            cfg = zoo_train_config(m, epoch_cap, args.threads, args.progress)
            ds = datasets[ks[m]]
            r = training.train_model(m, ds, cfg, seed=s)
            pv.append(training.predict(r.model, ds.valid, max_len=cfg.max_len))
            pt.append(training.predict(r.model, ds.test, max_len=cfg.max_len))
            summaries.append({"model": m, "context": ks[m], **run_summary(r)})
            say(f"mosi_utterance {row} seed={s}: {m} K={ks[m]} valid mae {r.valid['mae']:.4f} ({r.seconds:.0f} s)")
        valid = regression_metrics("mosi", np.mean(pv, axis=0), first.valid.labels)
        test = regression_metrics("mosi", np.mean(pt, axis=0), first.test.labels)
        valids.append(valid)
        tests.append(test)
        per_seed.append({"seed": s, "valid": rounded(valid), "test": rounded(test), "members": summaries})
    test, valid = aggregate(tests), aggregate(valids)
    say(
        f"mosi_utterance {row}: test acc2_non0 {test['acc2_non0']:.4f} +- {test['acc2_non0_std']:.4f}, "
        f"mae {test['mae']:.4f} ({time.perf_counter() - t0:.0f} s)"
    )
    mm = {
        "command": command,
        "date": utc_now(),
        "context": "/".join(str(ks[m]) for m in members),
        "seeds": list(seeds),
        "ensemble": {
            "members": members,
            "member_rule": rule,
            "rule": "mean of the members' scores; each member trained with "
            "the row's seed at its own recorded K, early-stopped on valid",
        },
        "valid": rounded(valid),
        "per_seed": per_seed,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _merge_utterance_row(args, row, test, {}, mm)
