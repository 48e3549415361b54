"""scripts/bench_kernels.py takes torch's dtype names (float32, bfloat16, float16) like its
short ones, and reports the short name, so rows of either spelling compare."""

import pytest
import torch
from script_module import load_script


def _load_bench():
    return load_script("bench_kernels")


@pytest.mark.parametrize(
    "given,short",
    [
        ("float32", "fp32"),
        ("bfloat16", "bf16"),
        ("float16", "fp16"),
        ("fp32", "fp32"),
        ("torch.bfloat16", "bf16"),
        ("BF16", "bf16"),
    ],
)
def test_dtype_names_map_to_the_short_ones(given, short):
    assert _load_bench().dtype_name(given) == short


@pytest.mark.parametrize("dtype,expected", [("float32", "fp32"), ("bfloat16", "bf16")])
def test_a_run_with_torch_dtype_names(dtype, expected, capsys):
    bench = _load_bench()
    rows = bench.main(
        [
            "--device",
            "cpu",
            "--dtype",
            dtype,
            "--shapes",
            "8x64",
            "--impls",
            "eager",
            "--passes",
            "fwd",
            "--repeats",
            "1",
            "--peak-gbps",
            "1",
            "--threads",
            str(torch.get_num_threads()),
        ]
    )
    assert [(r["impl"], r["dtype"]) for r in rows] == [("eager", expected)]
    assert f"dtype={expected}" in capsys.readouterr().out


def test_an_unknown_dtype_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        _load_bench().main(["--dtype", "float64"])
    err = capsys.readouterr().err
    assert "float64" in err and "bfloat16" in err and "fp32" in err
