"""The Hugging Face integration's view of the training data: a ``sample_id`` on every item and
every batch, and what the mixin cannot honour, refused when the trainer is built rather than at
its first step."""

from __future__ import annotations

import torch
from torch.utils.data import IterableDataset

from qtune.hf.flattened import is_flattened, packed_from_flattened
from qtune.pruning.indexed import IndexedDataset


def check_map_style(train_dataset) -> None:
    if isinstance(train_dataset, IterableDataset):
        raise TypeError(
            "PruningMixin plans each epoch over sample ids; an IterableDataset has none. Use a "
            "map-style dataset (a datasets.Dataset, or a torch Dataset with __len__ and __getitem__)"
        )


def check_trainer_setup(args, train_dataset) -> None:
    """Refuse, naming the argument, what a pruned run of whole epochs over sample ids cannot do."""
    if train_dataset is None:
        raise ValueError("PruningMixin needs a train_dataset")
    check_map_style(train_dataset)
    if len(train_dataset) == 0:
        raise ValueError("PruningMixin got an empty train_dataset: there is nothing to plan")
    if len(train_dataset) < args.world_size:
        raise ValueError(
            f"train_dataset has {len(train_dataset)} samples for {args.world_size} processes: "
            "every process needs at least one"
        )
    epochs = float(args.num_train_epochs)
    if args.max_steps <= 0 and epochs != int(epochs):
        raise ValueError(
            f"num_train_epochs={epochs:g}: PruningMixin plans whole epochs; use a whole number, or "
            "max_steps (or pruning_budget) to stop inside an epoch"
        )
    accelerator = getattr(args, "accelerator_config", None)
    for key in ("split_batches", "dispatch_batches"):
        if getattr(accelerator, key, None):
            raise ValueError(
                f"accelerator_config.{key}=True: with PruningMixin each process builds its own "
                "batches from the epoch plan's shared sequence; leave it unset"
            )
    strategy = str(getattr(args, "train_sampling_strategy", "random"))
    if strategy != "random" or getattr(args, "group_by_length", False):
        raise ValueError(
            f"train_sampling_strategy={strategy!r}: with PruningMixin the epoch plan decides which "
            "samples come and in what order; leave it 'random' (the plan is shuffled per epoch)"
        )


def check_batches_have_labels(collator, dataset, batch_size: int = 1) -> None:
    """A first batch (two items where batches hold two) through the collator, so a dataset whose
    batches carry no labels (the loss needs them), or a flattening collator whose row cannot be
    read per sample, fails here, not at the first step."""
    batch = collator([dataset[i] for i in range(min(2, max(1, batch_size), len(dataset)))])
    if "labels" not in batch:
        raise ValueError(
            "PruningMixin: batches of train_dataset carry no 'labels' (got "
            f"{sorted(batch)}); give items labels (-100 on prompt tokens), or a collator that builds them"
        )


def with_sample_id(dataset):
    first = dataset[0]
    if not isinstance(first, dict):
        raise TypeError("PruningMixin needs dataset items that are dicts (input_ids, labels, ...)")
    if "sample_id" in first:
        return dataset
    if hasattr(dataset, "add_column"):  # a datasets.Dataset: a real column
        return dataset.add_column("sample_id", list(range(len(dataset))))
    return IndexedDataset(dataset)


class KeepSampleId:
    """Wraps a collator that builds its batch from known keys only (TRL's drops the rest): the
    inner collator sees the items without ``sample_id``, which is added back as a tensor. A
    padding-free collator's single row becomes qtune's packed layout (``qtune.hf.flattened``).
    Items without ``sample_id`` (an eval set) go through the inner collator untouched."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, features: list[dict]) -> dict:
        if not features or "sample_id" not in features[0]:
            return self.inner(features)
        ids = torch.tensor([int(f["sample_id"]) for f in features], dtype=torch.long)
        batch = self.inner([{k: v for k, v in f.items() if k != "sample_id"} for f in features])
        if is_flattened(batch, len(features)):
            lengths = [len(f["input_ids"]) for f in features]
            return packed_from_flattened(batch, lengths, ids, self.inner)
        batch["sample_id"] = ids
        return batch
