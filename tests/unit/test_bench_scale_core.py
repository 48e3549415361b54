"""scripts/bench_scale_core.py measures the current core at a small size; the old core comes
from git, so that side runs only where the revision is in the history."""

import subprocess

import pytest
from script_module import load_script


@pytest.mark.parametrize("mode", ["new", "old"])
def test_one_point_reports_every_column(mode):
    bench = load_script("bench_scale_core")
    if mode == "old":
        have = subprocess.run(["git", "cat-file", "-e", f"{bench.OLD_REV}^{{commit}}"], cwd=bench.ROOT)
        if have.returncode:
            pytest.skip(f"revision {bench.OLD_REV} is not in this checkout's history")
    row = bench.one_point(mode, 3000, 16, bench.OLD_REV, 1)
    assert set(bench.COLUMNS) <= set(row)
    assert row["tensor_mb"] > 0 and row["mid_mb"] > row["end_mb"] > 0
