"""`bench accuracy` suite mosi_text: MOSI transcripts (std folds) through the engine's text encoder:
ridge / MLP / fine-tuned MiniLM heads and each zoo model's text branch (see bench/accuracy.py)."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .accuracy_common import (
    DEFAULT_EPOCH_CAP,
    FT_EPOCHS,
    MLP_EPOCHS,
    ZOO,
    aggregate,
    goal_status,
    merge_results,
    rounded,
    run_stamp,
    run_summary,
    say,
    test_row,
    utc_now,
    zoo_train_config,
)


# --------------------------------------------------------------------------- mosi_text
def load_text_data(csv: Path, subsample: int | None, progress: bool):
    """MOSI transcripts, std folds, the engine's TextEncoder tokens (as ``models.data.load_mosi_text``,
    sharing its cache for the full set); audio / vision absent (width 1)."""
    from ..models import data

    cols = data.read_mosi_transcripts(csv)
    n = len(cols["text"])
    rows = np.arange(n)
    if subsample:
        keep = []
        for s, frac in (("train", 1.0), ("valid", 1 / 3), ("test", 1 / 2)):
            r = np.where(cols["std_split"] == s)[0]
            m = max(int(subsample * frac), 20)
            keep.append(np.sort(np.random.default_rng(0).choice(r, size=min(m, len(r)), replace=False)))
        rows = np.sort(np.concatenate(keep))
    texts = [str(t) for t in cols["text"][rows]]
    store, pooled, ident = data.encode_texts(
        texts, None, None, "none" if subsample else None, None, progress, tag="mosi_text"
    )
    splits = {}
    for s in data.SPLITS:
        idx = np.where(cols["std_split"][rows] == s)[0]
        r = rows[idx]
        splits[s] = data.SplitData(
            store.subset(idx),
            data.SequenceStore.empty(len(idx), 1),
            data.SequenceStore.empty(len(idx), 1),
            cols["label"][r],
            cols["id"][r],
            cols["video_id"][r],
            cols["text"][r],
            pooled=pooled[idx],
        )
    info = {
        "source": str(csv),
        "format": "mosi-transcripts",
        "split": "std_split (CMU-SDK folds)",
        "text_encoder": ident,
        "audio": "absent",
        "vision": "absent",
    }
    return data.DatasetSplits(**splits, name="mosi_text", kind="regression", info=info)


def ridge_head(ds) -> tuple[dict, dict, dict]:
    from ..models.live_evaluation import RIDGE_ALPHAS, ridge_floor

    fit = ridge_floor(ds)
    return (
        fit["valid"],
        fit["test"],
        {
            "alpha": fit["alpha"],
            "alphas_tried": list(RIDGE_ALPHAS),
            "features": "TextEncoder pooled vector (mean of tokens, L2-normalised)",
        },
    )


def _masked_mean_tokens(split) -> np.ndarray:
    st = split.text
    out = np.zeros((len(st), st.dim), np.float32)
    for i in range(len(st)):
        x = st.get(i)
        if len(x):
            out[i] = x.mean(0)
    return out


def mlp_head(ds, seed: int, epochs: int, threads: int) -> tuple[dict, dict, dict]:
    """Masked mean of the frozen token embeddings -> LayerNorm -> 256 GELU -> dropout -> 1;
    AdamW 1e-3, wd 1e-2, batch 32, L1 loss, cosine schedule; epoch chosen by valid MAE."""
    import torch

    from ..models.metrics import regression_metrics
    from ..models.training import seed_everything, warmup_cosine

    torch.set_num_threads(threads)
    seed_everything(seed)
    X = {s: torch.from_numpy(_masked_mean_tokens(ds.split(s))) for s in ("train", "valid", "test")}
    Y = {s: torch.from_numpy(ds.split(s).labels) for s in ("train", "valid", "test")}
    d = X["train"].shape[1]
    net = torch.nn.Sequential(
        torch.nn.LayerNorm(d), torch.nn.Linear(d, 256), torch.nn.GELU(), torch.nn.Dropout(0.3), torch.nn.Linear(256, 1)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    n = len(Y["train"])
    steps = epochs * -(-n // 32)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, steps // 10))
    rng = np.random.default_rng(seed)
    best = (None, None, 0)

    def pred(s):
        net.eval()
        with torch.no_grad():
            return net(X[s]).squeeze(-1).numpy()

    for ep in range(1, epochs + 1):
        net.train()
        order = rng.permutation(n)
        for b in range(0, n, 32):
            idx = torch.from_numpy(order[b : b + 32])
            loss = torch.nn.functional.l1_loss(net(X["train"][idx]).squeeze(-1), Y["train"][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        mae = float(np.mean(np.abs(pred("valid") - ds.valid.labels)))
        if best[0] is None or mae < best[0]:
            best = (mae, copy.deepcopy(net.state_dict()), ep)
    net.load_state_dict(best[1])
    valid = regression_metrics("mosi", pred("valid"), ds.valid.labels)
    test = regression_metrics("mosi", pred("test"), ds.test.labels)
    return valid, test, {"best_epoch": best[2], "epochs": epochs}


def finetune_minilm(
    ds,
    seed: int,
    epochs: int,
    threads: int,
    lr: float = 5e-5,
    head_lr: float = 1e-3,
    batch_size: int = 32,
    max_tokens: int = 128,
    progress: bool = False,
) -> tuple[dict, dict, dict]:
    """The whole MiniLM (all-MiniLM-L6-v2) fine-tuned on the train fold's reference transcripts
    (``models.text_finetune``: mean pool -> linear, L1 loss, epoch chosen by valid MAE); test
    evaluated once. Weights are not saved."""
    from ..models.text_finetune import LabelledTexts, TextFinetuneConfig, finetune_text_encoder

    sets = {
        s: LabelledTexts([str(t) for t in ds.split(s).raw_text], ds.split(s).labels) for s in ("train", "valid", "test")
    }
    cfg = TextFinetuneConfig(
        train_layers=0,
        epochs=epochs,
        lr=lr,
        head_lr=head_lr,
        batch_size=batch_size,
        max_tokens=max_tokens,
        seed=seed,
        threads=threads,
    )
    res = finetune_text_encoder(
        [sets["train"]], {"valid": sets["valid"]}, {"test": sets["test"]}, cfg, progress=progress
    )
    return (
        res.valid["valid"],
        res.test["test"],
        {
            "best_epoch": res.best_epoch,
            "epochs": epochs,
            "lr": lr,
            "head_lr": head_lr,
            "batch_size": batch_size,
            "history": res.history,
        },
    )


def suite_text(args, models: Sequence[str], seeds: Sequence[int], command: str) -> None:
    from ..models import training

    ds = load_text_data(Path(args.transcripts), args.subsample_n, args.progress)
    sizes = ds.sizes()
    epoch_cap = args.epochs or DEFAULT_EPOCH_CAP
    suite_meta = {
        "data": (
            f"{Path(args.transcripts).name}: MOSI transcripts, std_split CMU-SDK folds (train "
            f"{sizes['train']} / valid {sizes['valid']} / test {sizes['test']}), encoded by the "
            f"engine's TextEncoder ({Path(ds.info['text_encoder'].get('model_dir', '')).parent.name}"
            f", max_tokens {ds.info['text_encoder'].get('max_tokens')}); audio / vision absent"
        ),
        "split": "std_split",
        "seeds": list(seeds),
        "quick": bool(args.quick),
        "machine": run_stamp(command, args.quick),
        "date": utc_now(),
        "notes": [
            "ridge: the pooled sentence vector + ridge, alpha on valid MAE (deterministic: one run).",
            "mlp: masked mean of the frozen token embeddings -> MLP; epoch chosen on valid MAE.",
            (
                "minilm_ft: the MiniLM encoder fine-tuned on the train fold (mean pool + linear, L1 loss); "
                "epoch chosen on valid MAE; its weights are not shipped (the live engine keeps the frozen "
                "encoder)."
            ),
            (
                "zoo models: the model with audio and vision absent (all-False masks) = its text branch; "
                f"epochs min({epoch_cap}, configured), early stopping on valid."
            ),
        ],
    }
    for name in models:
        t0 = time.perf_counter()
        per_seed: list[dict[str, Any]] = []
        extra: dict[str, Any] = {}
        if name == "ridge":
            v, t, extra = ridge_head(ds)
            per_seed.append({"seed": None, "valid": v, "test": t})
        elif name == "mlp":
            for s in seeds:
                v, t, e = mlp_head(ds, s, args.epochs or MLP_EPOCHS if not args.quick else 2, args.threads)
                per_seed.append({"seed": s, "valid": v, "test": t, **e})
        elif name == "minilm_ft":
            ft_epochs = args.ft_epochs or (1 if args.quick else FT_EPOCHS)
            for s in seeds:
                v, t, e = finetune_minilm(
                    ds, s, ft_epochs, args.threads, lr=args.ft_lr, progress=args.progress or not args.quick
                )
                say(
                    f"mosi_text minilm_ft seed {s}: valid mae {v['mae']:.4f} test acc2_non0 "
                    f"{t['acc2_non0']:.4f} mae {t['mae']:.4f} (epoch {e['best_epoch']})"
                )
                per_seed.append({"seed": s, "valid": v, "test": t, **e})
            extra = {"lr": args.ft_lr, "epochs": ft_epochs}
        elif name in ZOO:
            cfg = zoo_train_config(name, epoch_cap, args.threads, args.progress)
            for s in seeds:
                r = training.train_model(name, ds, cfg, seed=s)
                say(f"mosi_text {name} seed {s}: valid mae {r.valid['mae']:.4f} ({r.seconds:.0f} s)")
                per_seed.append(run_summary(r))
            extra = {
                "train_config": {k: v for k, v in cfg.as_dict().items() if k != "progress"},
                "hparams": r.model.hparams,
                "dims": ds.dims.as_dict(),
            }
        else:
            raise SystemExit(f"mosi_text: unknown model {name!r} (ridge, mlp, minilm_ft, {', '.join(ZOO)})")
        test = aggregate([p["test"] for p in per_seed])
        valid = aggregate([p["valid"] for p in per_seed])
        say(
            f"mosi_text {name}: test acc2_non0 {test['acc2_non0']:.4f} ± {test['acc2_non0_std']:.4f}, "
            f"mae {test['mae']:.4f}, corr {test['corr']:.4f} ({time.perf_counter() - t0:.0f} s)"
        )
        mm = {
            "command": command,
            "date": utc_now(),
            "seeds": [p["seed"] for p in per_seed],
            "valid": rounded(valid),
            **extra,
            "per_seed": [{k: (rounded(v) if isinstance(v, dict) else v) for k, v in p.items()} for p in per_seed],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        data = merge_results(
            Path(args.out), "mosi_text", {name: test_row(test)}, suite_meta, {name: mm}, fresh=args.fresh
        )
        args.fresh = False
        merge_results(
            Path(args.out),
            "mosi_text",
            {},
            {**suite_meta, "goal_status": goal_status("mosi_text", data["mosi_text"])},
            {},
        )
