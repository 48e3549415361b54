"""Two CPU processes (gloo) training packed rows: every rank runs the same number of batches,
both shards together hold the plan, and the ranks agree on plans and statistics stores."""

import pytest
from conftest import tiny_sft_overrides
from test_distributed import _train

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # two launches of two processes


@pytest.mark.parametrize("name", ["random", "qtuning"])
def test_two_ranks_train_packed_rows(tmp_path, name):
    args = tiny_sft_overrides(tmp_path / "cache") + [
        f"strategy={name}",
        "data.packing=true",
        "data.max_tokens_per_row=64",
        "batch_size=4",
    ]
    s = _train(args, tmp_path / name, tmp_path)
    for e in s["epochs_detail"]:
        assert e["world_size"] == 2  # the run checked that both ranks hold the same plan and store
        # both shards together: the plan's rows plus at most one repeated row (odd row count),
        # which holds fewer than 64 samples (a row has 64 token slots)
        if name == "random":
            assert e["planned_samples"] <= e["samples_trained"] < e["planned_samples"] + 64
        else:
            assert e["kept"] == e["samples_trained"] > 0
    assert s["packing"]["rows"] == sum(e["packing_rows"] for e in s["epochs_detail"])
