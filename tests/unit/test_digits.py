"""Digits classification task and MLP: deterministic stratified split, shapes, a quick fit."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from qtune.data.digits import build_digits_task, split_digits, split_indices
from qtune.models.classifier import build_mlp
from conftest import REPO

CONF = REPO / "conf"


def test_split_is_deterministic_disjoint_and_stratified():
    labels = np.repeat(np.arange(10), 20)
    tr, ev = split_indices(labels, 0.2, seed=3)
    assert np.array_equal(tr, split_indices(labels, 0.2, seed=3)[0])
    assert not set(tr) & set(ev) and sorted([*tr, *ev]) == list(range(200))
    assert (np.bincount(labels[ev], minlength=10) == 4).all()  # stratified: 20 % of each class
    assert not np.array_equal(ev, split_indices(labels, 0.2, seed=4)[1])
    with pytest.raises(ValueError, match="data.eval_fraction"):
        split_indices(labels, 1.0, seed=0)
    a, b = split_digits(0.2, seed=3), split_digits(0.2, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len(a[1]) == 1437 and len(a[3]) == 360


def test_bundle_items_and_collate_shapes():
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "data" / "digits.yaml"), {"seed": 0})
    bundle = build_digits_task(cfg)
    assert bundle.task == "classify" and bundle.info["num_classes"] == 10
    item = bundle.train[5]
    assert item["sample_id"] == 5 and item["inputs"].shape == (64,)
    assert item["inputs"].dtype == torch.float32
    assert item["labels"].shape == (1,) and item["labels"].dtype == torch.long
    batch = bundle.collate([bundle.train[i] for i in range(8)])
    assert batch["inputs"].shape == (8, 64) and batch["labels"].shape == (8, 1)
    assert batch["sample_id"].tolist() == list(range(8))
    assert 0.0 <= bundle.train.inputs.min() and bundle.train.inputs.max() <= 1.0
    assert set(bundle.train.labels.tolist()) == set(range(10))
    assert len(bundle.train_meta) == len(bundle.train)


def test_mlp_logits_are_one_token_and_learn():
    torch.manual_seed(0)
    bundle = build_digits_task({"eval_fraction": 0.2, "seed": 0})
    model = build_mlp(OmegaConf.load(CONF / "model" / "mlp.yaml"), 64, 10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loader = DataLoader(
        bundle.train,
        batch_size=128,
        shuffle=True,
        collate_fn=bundle.collate,
        generator=torch.Generator().manual_seed(0),
    )
    for _ in range(3):
        for batch in loader:
            logits = model(**batch)
            assert logits.shape == (len(batch["labels"]), 1, 10)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    ev = bundle.collate([bundle.eval[i] for i in range(len(bundle.eval))])
    with torch.no_grad():
        acc = (model(**ev).argmax(-1) == ev["labels"]).float().mean()
    assert acc > 0.85
