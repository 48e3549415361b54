"""TRL's ``SFTTrainer(packing=True)`` under :class:`qtune.hf.PruningMixin`: qtune's packer in
place of TRL's.

TRL packs the whole training set once, when the trainer is built: a packed row is then one
dataset item, so the samples inside it lose their identity, and samples an epoch's plan drops
would still be trained. Here TRL prepares (tokenises, masks) the training set without packing,
and each epoch the plan's kept samples are packed into rows of at most ``max_length`` tokens by
:func:`qtune.data.packing.pack_plan` (best-fit-decreasing, rows shuffled by (seed, epoch), the
same on every rank and again on resume). A batch is ``per_device_train_batch_size`` rows, as in
TRL; the epoch's rows are padded to whole optimiser steps on every rank by repeating its first
rows (their samples train twice and are counted twice in ``samples_trained``), so a pruned
epoch has fewer steps. Batches are collated by :func:`qtune.data.packed_collate.collate_packed`
(``position_ids`` restart per sample, no attention mask: attention stays within each sample).

``packing_strategy``:

* ``"bfd"`` (TRL's default): a sample longer than ``max_length`` keeps its first ``max_length``
  tokens, as TRL's BFD cuts it; cut at preparation (TRL's unpacked truncation with
  ``truncation_mode="keep_start"``), so scoring passes see the same tokens. Unlike TRL's packed
  preparation, a sample left without a label by the cut is dropped (TRL's unpacked rule): it
  has no loss, and so no score.
* ``"bfd_split"``: TRL splits a longer sample into pieces placed as separate sequences; qtune
  keeps samples whole. With no sample longer than ``max_length`` the two are the same, so it is
  accepted then and refused, naming the sample, otherwise.
* ``"wrapped"``: cuts samples at row ends and joins the pieces, so no per-sample statistic
  exists: refused when the trainer is built.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from qtune.data.packed_collate import collate_packed
from qtune.data.packing_config import Packing
from qtune.pruning.packed_epoch import pack_epoch, sample_lengths
from qtune.pruning.token_step import needs_step_extras
from qtune.pruning.sampler import shard_plan

STRATEGIES = {"bfd": "truncate", "bfd_split": "refuse"}  # TRL's packing_strategy -> qtune's policy


def trainer_args(args: tuple, kwargs: dict):
    """The ``args`` a Trainer subclass is built with (keyword, or the second positional)."""
    return kwargs["args"] if "args" in kwargs else (args[1] if len(args) > 1 else None)


def row_packing(args) -> "RowPacking | None":
    """The packing a TRL config asks for (None: no packing); refuses what cannot keep samples."""
    if not getattr(args, "packing", False):
        return None
    strategy = str(getattr(args, "packing_strategy", "bfd"))
    if strategy == "wrapped":
        raise ValueError(
            "packing_strategy='wrapped' cuts samples at row ends and joins the pieces, so PruningMixin "
            "cannot score, keep or drop a sample; use packing_strategy='bfd' (samples whole, each epoch's "
            "kept samples packed by qtune), or padding_free=True"
        )
    if strategy not in STRATEGIES:
        raise ValueError(f"packing_strategy={strategy!r}: PruningMixin packs with one of {sorted(STRATEGIES)}")
    if getattr(args, "max_length", None) is None:
        raise ValueError("packing=True needs max_length (the tokens of one packed row); it is None")
    return RowPacking(int(args.max_length), strategy)


def unpacked_prepare_args(args, strategy: str):
    """A copy of TRL's config that prepares the training set without packing: ``bfd`` cuts
    long samples to their first ``max_length`` tokens as TRL's BFD would; ``bfd_split`` leaves
    them whole (they are refused afterwards)."""
    prepared = copy.copy(args)
    prepared.truncation_mode = "keep_start"
    if strategy == "bfd_split":
        prepared.max_length = None
    return prepared


def dataset_lengths(dataset) -> np.ndarray:
    """Tokens per item: the ``input_ids`` column of a ``datasets.Dataset``, else each item's."""
    column = getattr(dataset, "column_names", None)
    if column is not None and "input_ids" in column:
        return np.fromiter((len(x) for x in dataset["input_ids"]), dtype=np.int64, count=len(dataset))
    return sample_lengths(dataset)


class RowItems(Dataset):
    """Items by row: index ``(i, j, ...)`` (a row's sample ids) gives those samples' items. The
    row travels in the index, so a loader's workers need no per-epoch state."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, row: tuple[int, ...]) -> list[dict]:
        return [self.dataset[int(i)] for i in row]

    def __getitems__(self, rows: list[tuple[int, ...]]) -> list[list[dict]]:
        fetch = getattr(self.dataset, "__getitems__", None)
        if fetch is None:
            return [self[row] for row in rows]
        items = fetch([int(i) for row in rows for i in row])  # one read for the whole batch
        out, at = [], 0
        for row in rows:
            out.append(items[at : at + len(row)])
            at += len(row)
        return out


class RowSampler(torch.utils.data.Sampler):
    """The current epoch's rows (tuples of sample ids), one global sequence that accelerate
    shards batch by batch; ``len``: the dataset's size, an upper bound on rows (as for ids)."""

    def __init__(self, epoch_rows, num_samples: int) -> None:
        self.epoch_rows, self.num_samples = epoch_rows, int(num_samples)

    def set_epoch(self, epoch: int) -> None:
        return None

    def __iter__(self):
        return iter(self.epoch_rows())

    def __len__(self) -> int:
        return self.num_samples


@dataclass
class RowPacking:
    """Packs each epoch's plan into rows of ``max_tokens_per_row`` tokens (``attach`` first)."""

    max_tokens_per_row: int
    strategy: str
    lengths: np.ndarray | None = None
    pad_id: int = 0
    _cached: tuple = field(default=(None, None), repr=False)

    @property
    def policy(self) -> str:
        return STRATEGIES[self.strategy]

    @property
    def layout(self) -> dict:
        """What a mid-epoch checkpoint must share with the run resuming it."""
        return {"max_tokens_per_row": self.max_tokens_per_row, "policy": self.policy}

    def attach(self, dataset, collator, model, args) -> None:
        """Read the prepared training set's lengths (and the collator's pad id); refuse a sample
        ``bfd_split`` would split, and FlashAttention over batches of several rows."""
        check_attention(model, args.per_device_train_batch_size)
        self.lengths = dataset_lengths(dataset)
        self.pad_id = int(getattr(collator, "pad_token_id", None) or 0)
        empty = np.flatnonzero(self.lengths < 1)
        if len(empty):
            raise ValueError(f"train_dataset item {int(empty[0])} has no tokens; packing needs at least one per item")
        longer = np.flatnonzero(self.lengths > self.max_tokens_per_row)
        if len(longer) and self.policy == "refuse":
            i = int(longer[0])
            raise ValueError(
                f"packing_strategy='bfd_split' would split train_dataset item {i} ({int(self.lengths[i])} tokens, "
                f"{len(longer)} items longer than max_length={self.max_tokens_per_row}) into pieces trained as "
                "separate sequences; PruningMixin keeps samples whole. Use packing_strategy='bfd' (keeps "
                "their first max_length tokens) or raise max_length"
            )

    def epoch_rows(self, epoch: int, plan, seed: int, step_rows: int, world_size: int) -> list[tuple[int, ...]]:
        """The epoch's rows in training order, padded to whole optimiser steps on every rank
        (``step_rows`` rows per rank and step); the packing numbers go in the plan's info (its
        history entry). Pure in (plan, lengths, seed, epoch), so cached for the last epoch."""
        key = (epoch, id(plan), step_rows, world_size)
        if self._cached[0] == key:
            return self._cached[1]
        packing = Packing(self.max_tokens_per_row, self.policy, self.pad_id)
        packed, counts = pack_epoch(
            plan.sample_ids.cpu().numpy(), self.lengths, packing, seed=seed, epoch=epoch, rows_per_batch=step_rows
        )
        plan.info.update(counts)
        order = shard_plan(
            torch.arange(packed.num_rows),
            seed=seed,
            epoch=epoch,
            rank=0,
            world_size=1,
            shuffle=False,
            multiple=step_rows * world_size,
        )
        rows = [tuple(int(i) for i in packed.row(r)) for r in order.tolist()]
        self._cached = (key, rows)
        return rows

    def collate(self):
        return partial(collate_packed, pad_id=self.pad_id, max_tokens_per_row=self.max_tokens_per_row)


def check_attention(model, rows_per_batch: int) -> None:
    """FlashAttention reads restarting ``position_ids`` as sample boundaries only in a batch of
    one row (transformers' ``_is_packed_sequence``); with more, attention would cross samples."""
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if rows_per_batch > 1 and attn in ("flash_attention_2", "flash_attention_3"):
        raise ValueError(
            f"packing=True with attn_implementation={attn!r} and per_device_train_batch_size={rows_per_batch}: "
            "FlashAttention keeps packed samples apart only in a batch of one row. Use "
            "per_device_train_batch_size=1 (one row of max_length tokens per batch), padding_free=True, "
            "or attn_implementation='sdpa'"
        )


def check_resume_layout(core, epoch: int, packing: "RowPacking | None") -> None:
    """A mid-epoch checkpoint resumes only with its own packing (the rows it skips must be the
    rows it trained), named in the trainer's terms."""
    saved = getattr(core, "_resume_packing", None)
    mine = None if packing is None else packing.layout
    if core.resuming(epoch) and saved != mine:
        raise ValueError(
            f"this checkpoint was taken mid-epoch with packing {saved}; this trainer packs with {mine} "
            "(SFTConfig packing, packing_strategy, max_length), which would retrain or skip samples. "
            "Resume with the same packing, or from an end-of-epoch checkpoint"
        )


def packed_train_dataloader(trainer, packing: RowPacking) -> DataLoader:
    """Trainer's train loader with rows for items: the dataset's unused columns removed as
    Trainer does, batches of ``_train_batch_size`` rows, prepared by accelerate (which shards
    batches over ranks as it does the padded loader's)."""
    from transformers.trainer_utils import seed_worker

    dataset, args = trainer.train_dataset, trainer.args
    if hasattr(dataset, "column_names"):
        dataset = trainer._remove_unused_columns(dataset, description="Training")
    params = {
        "batch_size": trainer._train_batch_size,
        "collate_fn": packing.collate(),
        "num_workers": args.dataloader_num_workers,
        "pin_memory": args.dataloader_pin_memory,
        "persistent_workers": args.dataloader_persistent_workers,
        "sampler": RowSampler(lambda: trainer._epoch_ids(trainer._epoch), len(dataset)),
        "worker_init_fn": partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
    }
    if args.dataloader_num_workers > 0:
        params["prefetch_factor"] = args.dataloader_prefetch_factor
        params["multiprocessing_context"] = args.dataloader_multiprocessing_context
    return trainer.accelerator.prepare(DataLoader(RowItems(dataset), **params))


class PackingHooks:
    """The Trainer hooks :class:`qtune.hf.PruningMixin` takes under packing (``_row_packing``
    set): TRL's preparation of the training set without packing, and the loader of rows."""

    _row_packing: RowPacking | None = None

    def _prepare_dataset(self, dataset, processing_class, args, packing, *rest):
        if packing and self._row_packing is not None and rest and rest[-1] == "train":
            args, packing = unpacked_prepare_args(args, self._row_packing.strategy), False
        return super()._prepare_dataset(dataset, processing_class, args, packing, *rest)

    def get_train_dataloader(self):
        if self._row_packing is None:
            return super().get_train_dataloader()
        return packed_train_dataloader(self, self._row_packing)


def check_rule_packs(rule, packed: bool) -> None:
    """Refuse, at construction, a token rule that reads a reference or top-K entropies on packed
    or padding-free batches: the packed step computes only the policy's own statistics."""
    if packed and rule is not None and needs_step_extras(rule.needs()):
        raise ValueError(
            f"pruning_token={rule.name!r} reads a reference model's losses or top-K entropies, which packed "
            "batches (packing=True, padding_free=True) do not compute yet: train it unpacked, or use a rule "
            "on the policy's own statistics (random, ppl, dft)"
        )
