"""A digest of what a run trains and evaluates on, so a resume onto other data is refused.

The digest covers each split's items in order after tokenisation (token ids and labels, or
features and classes): a rewritten data file, another split seed or another tokenizer all
change it, while the same data rebuilt on another machine gives the same one. It is stored with
the pruning state in every checkpoint and in ``summary.json``.
"""

from __future__ import annotations

import hashlib

import torch


def _update(h, value) -> None:
    if torch.is_tensor(value):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    else:
        h.update(repr(value).encode())


def dataset_digest(dataset) -> str:
    """sha256 (16 hex digits) of a split's items in order."""
    h = hashlib.sha256()
    if hasattr(dataset, "input_ids") and hasattr(dataset, "labels"):  # tokenised SFT items
        for ids, labels in zip(dataset.input_ids, dataset.labels):
            _update(h, torch.as_tensor(ids))
            _update(h, torch.as_tensor(labels))
    elif hasattr(dataset, "inputs") and hasattr(dataset, "labels"):  # features and classes
        _update(h, dataset.inputs)
        _update(h, dataset.labels)
    else:
        for i in range(len(dataset)):
            item = dataset[i]
            for key in sorted(k for k in item if k != "sample_id"):
                h.update(key.encode())
                _update(h, item[key])
    return h.hexdigest()[:16]


def data_fingerprint(bundle) -> dict[str, str | int]:
    """What identifies a task bundle's data: each split's digest and the training set's size."""
    return {
        "train_samples": len(bundle.train),
        "train_digest": dataset_digest(bundle.train),
        "eval_digest": dataset_digest(bundle.eval) if bundle.eval is not None else "",
    }
