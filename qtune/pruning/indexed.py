"""Give any map-style dataset the ``sample_id`` the pruning engine needs."""

from __future__ import annotations

from torch.utils.data import Dataset


class IndexedDataset(Dataset):
    """Wraps ``dataset`` so item i becomes ``{"sample_id": i, **item}`` (dict items) or
    ``{"sample_id": i, "inputs": x, "labels": y}`` (tuple items)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict:
        item = self.dataset[idx]
        if isinstance(item, dict):
            return {"sample_id": int(idx), **item}
        inputs, labels = item
        return {"sample_id": int(idx), "inputs": inputs, "labels": labels}
