"""Stage 2a's teacher features on disk: the teacher runs once over the training set, not once per epoch.

Stage 2a compares the student with the teacher's embeddings, hidden states and attention at every
step, on the same examples every epoch (TinyBERT runs it for many epochs over augmented data). When
2a runs at least two passes over its training set, the features its weighted losses read are
computed once before training and stored in the run folder (``cache/teacher-features-<key>/``) in
float16; every epoch, and a resumed run, reads them through a memory map instead of running the
teacher. Only what the layer map and the nonzero loss weights use is stored, each example at its real
length (padding is never stored):

- ``tokens.f16`` (tokens, columns): one row per real token, with the mapped hidden states (0 = the
  embedding output), attention queries and keys (attention_kl, or attention_scores_mse when they are
  smaller than its scores) and values (value_relation_kl);
- ``pairs.f16``: per example, the pre-softmax attention scores (len, len, heads of all such layers) of
  the attention_scores_mse layers, when these are smaller than the queries and keys they come from (over
  the set, sum of heads * len^2 against 2 * width * len: short sentences store scores, long ones q/k).

The losses then see the teacher's features rounded to float16 (relative error <= 2^-11); nothing else
about what is computed changes. The key covers the teacher's weight files, the training set's token
ids, the device type and autocast precision, and the stored layout (layer map and losses), so a
stale cache is never read: another key is another folder, and folders of other keys are deleted when
a new one is sealed. The cache is skipped, with one line saying why, when 2a runs fewer than two
passes, when its estimated size is above ``task_distill.feature_cache_max_gb`` or the free disk, when
a weighted 2a loss reads the teacher's logits, or when a feature overflows float16.

Several processes: the main process builds and seals the folder; the others wait for it at a barrier
(the process group's timeout is long: distill.base.ranks) and then read it.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from distill.engine.batching import to_model_inputs
from distill.engine.features import Features, LayerAttention, num_heads
from distill.engine.layer_map import Match
from distill.engine.logit_cache import CACHE_DIR, weights_stamp
from distill.engine.losses import LOSSES
from distill.engine.placement import borrowed, placement
from distill.base.ranks import is_main_process, process_count, wait_for_everyone

PREFIX = "teacher-features-"
FORMAT = 1  # bump when the stored layout changes: old folders then have another key
ID_COLUMN = "example_id"  # the training set's row index, so a batch can find its rows
RESERVE_BYTES = 1 << 30  # free disk left over after the cache is written
BYTES = 2  # float16


@dataclass(frozen=True)
class Layout:
    """What is stored: per-token columns (kind, teacher layer, width) and per-example score blocks
    (attention layer, heads). Layers as in Match: hidden 0..N, attention 0-based blocks."""

    columns: tuple[tuple[str, int, int], ...]  # ("hidden" | "query" | "key" | "value", layer, width)
    score_layers: tuple[tuple[int, int], ...]  # (attention layer, heads), stored as (len, len, heads)

    @property
    def width(self) -> int:
        return sum(w for _, _, w in self.columns)

    @property
    def score_heads(self) -> int:
        return sum(h for _, h in self.score_layers)

    def describe(self) -> str:
        parts = {}
        for kind, layer, _ in self.columns:
            parts.setdefault(kind, []).append(str(layer if kind == "hidden" else layer + 1))
        for layer, _ in self.score_layers:
            parts.setdefault("scores", []).append(str(layer + 1))
        return "; ".join(f"{kind} {','.join(layers)}" for kind, layers in parts.items())

    @classmethod
    def from_meta(cls, meta: dict) -> "Layout":
        return cls(tuple(tuple(c) for c in meta["columns"]), tuple(tuple(s) for s in meta["score_layers"]))

    def size_bytes(self, lengths: np.ndarray) -> int:
        lengths = lengths.astype(np.int64)
        return int(BYTES * (lengths.sum() * self.width + (lengths ** 2).sum() * self.score_heads))


def plan_layout(matches: list[Match], tap, hidden_width: int, lengths: np.ndarray) -> Layout | str:
    """The layout the weighted matches need, or why they cannot be served from a cache."""
    hidden, scores, query_key, value = set(), set(), set(), set()
    for m in matches:
        if m.weight == 0:  # zero-weight terms are logged when their features are stored anyway
            continue
        feature = LOSSES[m.loss].feature
        if feature == "hidden":
            hidden.add(m.teacher_layer)
        elif feature == "scores":
            scores.add(m.teacher_layer - 1)
        elif feature == "query_key":
            query_key.add(m.teacher_layer - 1)
        elif feature == "value":
            value.add(m.teacher_layer - 1)
        elif feature not in ("labels", "mlm_labels"):  # from the batch, not the teacher
            return f"the 2a loss {m.loss} reads the teacher's {feature}, which this cache does not store"
    if not (hidden or scores or query_key or value):
        return "no weighted 2a loss reads a teacher feature"
    lengths = lengths.astype(np.int64)
    score_layers = []
    for layer in sorted(scores - query_key):  # scores alone: store whichever form is smaller
        heads, width = num_heads(tap.blocks[layer]), tap.blocks[layer].query.out_features
        if heads * (lengths ** 2).sum() <= 2 * width * lengths.sum():
            score_layers.append((layer, heads))
        else:
            query_key.add(layer)
    columns = [("hidden", layer, hidden_width) for layer in sorted(hidden)]
    for layer in sorted(query_key):
        width = tap.blocks[layer].query.out_features
        columns += [("query", layer, width), ("key", layer, width)]
    columns += [("value", layer, tap.blocks[layer].value.out_features) for layer in sorted(value)]
    return Layout(tuple(columns), tuple(score_layers))


def covers(layout: Layout, m: Match) -> bool:
    """Whether a match's teacher side can be read from a cache of this layout."""
    feature = LOSSES[m.loss].feature
    stored = {(kind, layer) for kind, layer, _ in layout.columns}
    if feature == "hidden":
        return ("hidden", m.teacher_layer) in stored
    if feature == "scores":
        return (m.teacher_layer - 1) in dict(layout.score_layers) or ("query", m.teacher_layer - 1) in stored
    if feature == "query_key":
        return ("query", m.teacher_layer - 1) in stored
    if feature == "value":
        return ("value", m.teacher_layer - 1) in stored
    return feature in ("labels", "mlm_labels")


def token_lengths_and_digest(dataset) -> tuple[np.ndarray, str]:
    """Real tokens per example, and a digest of the token ids (and segment ids) in the dataset's order."""
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    digest = hashlib.sha256()
    lengths = None
    for name in ("input_ids", "token_type_ids"):
        if name not in table.column_names:
            continue
        column = table.column(name).combine_chunks()
        sizes = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
        lengths = sizes if lengths is None else lengths
        digest.update(name.encode())
        digest.update(sizes.tobytes())
        digest.update(column.flatten().to_numpy(zero_copy_only=False).astype(np.int64).tobytes())
    return lengths, digest.hexdigest()


def cache_key(teacher_dir: Path | str, data_digest: str, examples: int, device_type: str, dtype,
              layout: Layout) -> str:
    folder = Path(teacher_dir)
    payload = [FORMAT, str(folder.resolve()), weights_stamp(folder), data_digest, examples, device_type, str(dtype),
               [list(c) for c in layout.columns], [list(s) for s in layout.score_layers]]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:20]


@dataclass
class CachedAttention(LayerAttention):
    """A teacher layer's attention read from the cache: stored scores, or q/k (and v) to compute them from."""

    stored_scores: torch.Tensor | None = None  # (batch, heads, seq, seq)

    def scores(self) -> torch.Tensor:
        return self.stored_scores if self.stored_scores is not None else super().scores()


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Concatenated [start, start + size) index ranges, as one index array."""
    if not len(starts):
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(a, a + n, dtype=np.int64) for a, n in zip(starts.tolist(), sizes.tolist())])


class FeatureCache:
    """A sealed cache folder, read through memory maps; ``features(batch)`` stands in for the teacher."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.layout = Layout.from_meta(meta)
        self.num_layers = meta["teacher_layers"]
        self.heads = meta["teacher_heads"]
        index = np.load(self.folder / "index.npy")  # (examples, 3): token start, pair start, length
        self.token_start, self.pair_start, self.lengths = index[:, 0], index[:, 1], index[:, 2]
        tokens = int(self.lengths.sum())
        self.tokens = np.memmap(self.folder / "tokens.f16", dtype=np.float16, mode="r",
                                shape=(tokens, self.layout.width)) if self.layout.width and tokens else None
        pairs = int((self.lengths ** 2).sum()) * self.layout.score_heads
        self.pairs = np.memmap(self.folder / "pairs.f16", dtype=np.float16, mode="r",
                               shape=(pairs,)) if pairs else None

    @staticmethod
    def damage(folder: Path) -> str | None:
        """Why a sealed folder cannot be read as it is (a file cut short or missing), or None."""
        try:
            meta = json.loads((folder / "meta.json").read_text())
            index = np.load(folder / "index.npy")
            lengths = index[:, 2].astype(np.int64)
            layout = Layout.from_meta(meta)
            want = {"tokens.f16": int(lengths.sum()) * layout.width * BYTES,
                    "pairs.f16": int((lengths ** 2).sum()) * layout.score_heads * BYTES}
            if len(index) != meta["examples"]:
                return f"index.npy has {len(index)} examples, meta.json {meta['examples']}"
            for name, size in want.items():
                if not (folder / name).is_file():
                    return f"{name} is missing"
                have = (folder / name).stat().st_size
                if have != size:
                    return f"{name} has {have} bytes, {size} expected"
        except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
            return f"{type(error).__name__}: {error}"
        return None

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir())

    def features(self, batch: dict[str, torch.Tensor]) -> Features:
        """The teacher's Features for a padded batch of training examples (float32, zeros at padding)."""
        mask = batch["attention_mask"]
        device = mask.device
        b, s = mask.shape
        ids = batch[ID_COLUMN].cpu().numpy()
        real = mask.sum(1).cpu().numpy()  # one host sync a step
        lengths = self.lengths[ids]
        if not np.array_equal(real, lengths):
            raise RuntimeError(f"the teacher feature cache {self.folder} does not match this batch (real tokens "
                               f"{real.tolist()} vs stored {lengths.tolist()}); delete that folder")
        hidden: list[torch.Tensor | None] = [None] * (self.num_layers + 1)
        parts: dict[tuple[str, int], torch.Tensor] = {}
        if self.tokens is not None:
            rows = torch.from_numpy(self.tokens[_ranges(self.token_start[ids], lengths)])  # (n_real, width)
            rows = rows.to(device, non_blocking=True).float()
            positions = mask.reshape(-1).nonzero().squeeze(1)  # (n_real,) into batch * seq, row-major
            full = rows.new_zeros(b * s, rows.shape[1]).index_copy_(0, positions, rows).view(b, s, -1)
            start = 0
            for kind, layer, width in self.layout.columns:
                parts[(kind, layer)] = full[..., start:start + width]  # (batch, seq, width)
                start += width
        for (kind, layer), value in parts.items():
            if kind == "hidden":
                hidden[layer] = value
        scores = self._scores(ids, lengths, mask)
        attention: list[CachedAttention | None] = [None] * self.num_layers
        for layer in range(self.num_layers):
            q, k, v = (parts.get((name, layer)) for name in ("query", "key", "value"))
            if q is not None or v is not None or layer in scores:
                attention[layer] = CachedAttention(q, k, v, self.heads[layer], scores.get(layer))
        return Features(hidden=tuple(hidden), attention=attention, logits=None)

    def _scores(self, ids, lengths, mask: torch.Tensor) -> dict[int, torch.Tensor]:
        if self.pairs is None:
            return {}
        b, s = mask.shape
        heads = self.layout.score_heads
        sizes = heads * lengths.astype(np.int64) ** 2
        flat = torch.from_numpy(self.pairs[_ranges(self.pair_start[ids], sizes)]).to(mask.device).float()
        out = flat.new_zeros(b, s, s, heads)  # (batch, query, key, stored heads)
        out[_real_pairs(mask)] = flat.view(-1, heads)  # example by example, each (len, len, heads)
        result, start = {}, 0
        for layer, layer_heads in self.layout.score_layers:
            result[layer] = out[..., start:start + layer_heads].permute(0, 3, 1, 2)  # (batch, heads, seq, seq)
            start += layer_heads
        return result


def _real_pairs(mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq, seq) bool: query and key both real tokens; row-major order is each example's (len, len)."""
    real = mask.bool()
    return real[:, :, None] & real[:, None, :]


def _rows_of(features: Features, layout: Layout, positions: torch.Tensor) -> torch.Tensor:
    """(n_real, width) float16: the layout's per-token columns at the real positions of a batch."""
    pieces = []
    for kind, layer, width in layout.columns:
        value = features.hidden[layer] if kind == "hidden" else getattr(features.attention[layer], kind)
        pieces.append(value.reshape(-1, width).index_select(0, positions).to(torch.float16))
    return torch.cat(pieces, dim=1)


def _write(objective, dataset, layout: Layout, folder: Path, loader_factory, place, batch_size: int) -> str | None:
    """Run the teacher over ``dataset`` and append its features to ``folder``; None, or why it stopped."""
    tap = objective.teacher_tap
    index = np.zeros((len(dataset), 3), dtype=np.int64)
    tokens_at, pairs_at = 0, 0
    with open(folder / "tokens.f16", "wb") as tokens_file, open(folder / "pairs.f16", "wb") as pairs_file, \
            borrowed(objective.teacher, place), torch.no_grad():
        for batch in tqdm(loader_factory(dataset, batch_size), desc="2a teacher features", dynamic_ncols=True):
            ids = batch.pop(ID_COLUMN).numpy()
            batch = place.inputs(batch)
            mask = batch["attention_mask"]
            with place.autocast():
                features = tap(to_model_inputs(batch))
            lengths = mask.sum(1).cpu().numpy().astype(np.int64)
            blocks = []
            if layout.width:
                blocks.append((_rows_of(features, layout, mask.reshape(-1).nonzero().squeeze(1)), tokens_file))
            if layout.score_heads:
                scores = torch.cat([features.attention[layer].scores().to(torch.float16)
                                    for layer, _ in layout.score_layers], dim=1)  # (batch, stored heads, seq, seq)
                blocks.append((scores.permute(0, 2, 3, 1)[_real_pairs(mask)], pairs_file))  # (pairs, stored heads)
            for half, file in blocks:
                if not bool(torch.isfinite(half).all()):
                    return "a teacher feature is beyond the float16 range"
                half.cpu().numpy().tofile(file)
            index[ids, 0] = tokens_at + np.concatenate([[0], np.cumsum(lengths)[:-1]])
            index[ids, 1] = pairs_at + layout.score_heads * np.concatenate([[0], np.cumsum(lengths ** 2)[:-1]])
            index[ids, 2] = lengths
            tokens_at += int(lengths.sum())
            pairs_at += layout.score_heads * int((lengths ** 2).sum())
    np.save(folder / "index.npy", index)
    return None


def planned_passes(train_cfg, examples: int, processes: int) -> float:
    """Passes over the training set that a stage with ``train_cfg`` makes (epochs, or max_steps' worth;
    each epoch ends on an optimizer step of its own, see distill.engine.trainer.steps_per_epoch)."""
    from distill.engine.trainer import steps_per_epoch, total_steps

    batches = max(1, math.ceil(math.ceil(examples / train_cfg.batch_size) / processes))
    whole, rest = divmod(total_steps(train_cfg, batches), steps_per_epoch(train_cfg, batches))
    return whole + rest * train_cfg.grad_accum / batches


def _say(message: str) -> None:
    if is_main_process():
        print(f"[intermediate] {message}")


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB"


def _build(objective, dataset, layout, folder: Path, loader_factory, place, batch_size, meta: dict,
           size: int) -> None:
    """Main process: write the cache under a scratch name and seal it (meta.json, rename); on a stop,
    remove it and say why. Other keys' folders go once a new one is sealed."""
    tmp = folder.with_name(folder.name + ".tmp")
    start = time.perf_counter()
    step = "writing it"
    try:
        tmp.mkdir()
        problem = _write(objective, dataset, layout, tmp, loader_factory, place, batch_size)
        if problem is None:
            step = "sealing it"
            (tmp / "meta.json").write_text(json.dumps(meta))
            tmp.rename(folder)
    except OSError as error:  # e.g. the disk filled up after all
        problem = f"{step} failed ({error.strerror or error})"
    except BaseException:  # out of memory, Ctrl-C...: no scratch folder left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if problem:
        shutil.rmtree(tmp, ignore_errors=True)
        _say(f"teacher feature cache off: {problem}; the teacher runs every step")
        return
    for other in folder.parent.glob(PREFIX + "*"):
        if other != folder:
            shutil.rmtree(other, ignore_errors=True)
    per_1000 = size / len(dataset) * 1000 / 1e6
    _say(f"teacher features ({layout.describe()}) of {len(dataset)} examples computed once in "
         f"{time.perf_counter() - start:.0f} s into {folder} ({_gb(size)}, {per_1000:.1f} MB per 1,000 examples); "
         "read every epoch instead of running the teacher")


def _usable(folder: Path) -> bool:
    """Main process: whether a sealed, undamaged cache is in ``folder``. Anything else there is removed
    (a sealed folder read as damaged; a folder without meta.json, left by a kill between unsealing and
    removing a damaged one: it would make sealing the new build fail and keep the cache off for good)."""
    if (folder / "meta.json").is_file():
        damage = FeatureCache.damage(folder)
        if damage is None:
            return True
        _say(f"teacher feature cache {folder} is damaged ({damage}); building it again")
        (folder / "meta.json").unlink(missing_ok=True)  # unsealed first, so nobody reads what is left
    shutil.rmtree(folder, ignore_errors=True)
    return False


def _room_for(folder: Path, size: int, max_gb: float) -> bool:
    """Main process: whether a cache of ``size`` bytes may be built in ``folder`` (under the cap, with 1 GB
    of disk left free); the scratch folder of a build that a kill cut short is removed."""
    shutil.rmtree(folder.with_name(folder.name + ".tmp"), ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    if size > max_gb * 1e9:
        _say(f"teacher feature cache off: its estimated {_gb(size)} exceed task_distill.feature_cache_max_gb="
             f"{max_gb:g}; raise that key to use it")
        return False
    if size + RESERVE_BYTES > free:
        _say(f"teacher feature cache off: its estimated {_gb(size)} do not fit the free disk ({_gb(free)}, "
             f"1 GB kept free) under {folder.parent}")
        return False
    return True


def prepare(ctx, objective, teacher_dir: Path | str, train_set, train_cfg=None):
    """Stage 2a: serve ``objective``'s teacher features from a disk cache when that pays and fits.
    ``train_cfg``: the schedule 2a will train (its step floor applied); default task_distill.intermediate.

    Returns the training set to train on: with an ``example_id`` column when the cache is used (and
    ``objective`` then reads it), else ``train_set`` unchanged."""
    t = ctx.cfg.task_distill
    train_cfg = train_cfg or t.intermediate
    if not t.feature_cache:
        return train_set
    if getattr(ctx.tokenizer, "padding_side", "right") != "right":
        _say("teacher feature cache off: the tokenizer pads on the left, so a teacher feature would depend on "
             "the padding of the batch it was computed in")
        return train_set
    passes = planned_passes(train_cfg, len(train_set), process_count())
    if passes < 2:
        plural = "" if passes == 1 else "es"
        _say(f"teacher feature cache off: 2a makes {passes:g} pass{plural} over its data, nothing to reuse")
        return train_set
    lengths, digest = token_lengths_and_digest(train_set)
    layout = plan_layout(objective.matches, objective.teacher_tap, objective.teacher.config.hidden_size, lengths)
    if isinstance(layout, str):
        _say(f"teacher feature cache off: {layout}")
        return train_set
    place = placement(train_cfg.mixed_precision)
    key = cache_key(teacher_dir, digest, len(train_set), place.device.type, place.dtype, layout)
    folder = Path(ctx.run_dir) / CACHE_DIR / f"{PREFIX}{key}"
    dataset = train_set if ID_COLUMN in train_set.column_names else \
        train_set.add_column(ID_COLUMN, np.arange(len(train_set), dtype=np.int64))
    size = layout.size_bytes(lengths)
    reused = False
    if is_main_process():
        reused = _usable(folder)
        if not reused and _room_for(folder, size, t.feature_cache_max_gb):
            blocks = objective.teacher_tap.blocks
            meta = {"format": FORMAT, "key": key, "examples": len(train_set), "columns": layout.columns,
                    "score_layers": layout.score_layers, "teacher_layers": len(blocks),
                    "teacher_heads": [num_heads(block) for block in blocks]}
            _build(objective, dataset, layout, folder, lambda d, bs: ctx.loader("train", bs, False, d), place,
                   train_cfg.batch_size, meta, size)
    # the folder is sealed, or the cache is off (should the main process fail, the launcher stops every rank)
    wait_for_everyone()
    if not (folder / "meta.json").is_file():
        return train_set
    cache = FeatureCache(folder)
    if reused:
        _say(f"teacher features ({layout.describe()}) of {len(train_set)} examples reused from {folder} "
             f"({_gb(cache.size_bytes())})")
    skipped = objective.use_feature_cache(cache)
    if skipped:
        _say(f"zero-weight terms {sorted({m.loss for m in skipped})} are not logged while the teacher features "
             "come from the cache (it stores only what weighted terms read)")
    return dataset
