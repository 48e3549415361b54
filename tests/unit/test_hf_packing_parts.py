"""The parts of the HF mixin's packing: padding-free rows read per sample, TRL's packing
settings accepted or refused, an epoch's rows padded to whole steps."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from qtune.data.packed_collate import collate_packed
from qtune.data.packing import pack_plan
from qtune.hf.data import KeepSampleId
from qtune.hf.packing import RowPacking, check_attention, row_packing


def items(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(3, 50, (n,), generator=g)
        labels = ids.clone()
        labels[: n // 2] = -100
        out.append({"sample_id": 10 + i, "input_ids": ids.tolist(), "labels": labels.tolist()})
    return out


@pytest.mark.parametrize("which", ["trl", "flattening"])
def test_a_flattened_batch_reads_as_the_packed_row_of_its_samples(which):
    if which == "trl":
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        inner = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    else:
        from transformers import DataCollatorWithFlattening

        inner = DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_seq_idx=True)
    feats = items([5, 1, 7, 3])
    got = KeepSampleId(inner)(feats)
    want = collate_packed([feats])  # qtune's own packed collate of the same samples, one row
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_a_collator_whose_positions_do_not_restart_at_zero_is_refused():
    from transformers import DataCollatorWithFlattening

    collate = KeepSampleId(DataCollatorWithFlattening(position_ids_start=2))
    with pytest.raises(ValueError, match="DataCollatorWithFlattening did not return the batch's 2 samples"):
        collate(items([4, 3]))


def test_padded_batches_and_items_without_sample_id_pass_through():
    def pad(features):
        width = max(len(f["input_ids"]) for f in features)
        ids = [f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(ids) != 0}

    feats = items([2, 4])
    batch = KeepSampleId(pad)(feats)
    assert "seg" not in batch and batch["sample_id"].tolist() == [10, 11] and batch["input_ids"].shape == (2, 4)
    assert KeepSampleId(lambda f: {"n": len(f)})([{"input_ids": [1]}]) == {"n": 1}  # an eval set: untouched


def config(**kw):
    return SimpleNamespace(packing=True, packing_strategy="bfd", max_length=16, **kw)


def test_trl_packing_settings():
    assert row_packing(SimpleNamespace(packing=False)) is None
    assert row_packing(SimpleNamespace()) is None  # a plain TrainingArguments
    assert row_packing(config()).policy == "truncate"  # TRL's BFD keeps a long sample's start
    split = config()
    split.packing_strategy = "bfd_split"
    assert row_packing(split).policy == "refuse"
    wrapped = config()
    wrapped.packing_strategy = "wrapped"
    with pytest.raises(ValueError, match="packing_strategy='wrapped' cuts samples"):
        row_packing(wrapped)
    other = config()
    other.packing_strategy = "ffd"
    with pytest.raises(ValueError, match="packing_strategy='ffd'"):
        row_packing(other)


def test_flash_attention_is_refused_for_batches_of_several_rows():
    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2' and per_device_train_batch_size=4"):
        check_attention(model, 4)
    check_attention(model, 1)  # one row per batch: FlashAttention reads its boundaries
    check_attention(SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa")), 4)


def test_epoch_rows_are_the_packers_rows_padded_to_whole_steps_on_every_rank():
    lengths = np.random.default_rng(0).integers(1, 20, size=40)
    packing = RowPacking(24, "bfd", lengths=lengths)
    plan = SimpleNamespace(sample_ids=torch.arange(0, 40, 2), info={})
    rows = packing.epoch_rows(3, plan, seed=7, step_rows=3, world_size=2)
    packed = pack_plan(plan.sample_ids.numpy(), lengths[::2], 24, seed=7, epoch=3)
    real = [tuple(r.tolist()) for r in packed.rows()]
    assert len(rows) % 6 == 0 and len(rows) - len(real) < 6
    assert rows[: len(real)] == real and rows[len(real) :] == real[: len(rows) - len(real)]
    assert plan.info["packing_rows"] == len(real) and plan.info["packing_tokens"] == int(lengths[::2].sum())
