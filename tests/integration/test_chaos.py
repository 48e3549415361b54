"""scripts/chaos.py: a kill lands on a running qtune-train, the point resumes, and its result
is compared with the uninterrupted run's."""

import json

from script_module import load_script


def test_a_killed_point_resumes_to_the_uninterrupted_result(tmp_path):
    chaos = load_script("chaos")
    report = tmp_path / "chaos.json"
    rc = chaos.main(
        ["--kills", "1", "--points", "random", "--out", str(tmp_path), "--window", "1", "4", "--json", str(report)]
    )
    result = json.loads(report.read_text())
    assert rc == 0 and result["attempted"] == result["survived"] == 1
    (point,) = result["points"]
    assert point["same_as_uninterrupted"] and point["starts"] >= 2  # killed once, started again
    assert point["SIGKILL"] + point["SIGTERM"] == 1
    assert all(code in (0, -9, -15, 143) for r in point["rounds"] for code in r["exits"]), (
        point
    )  # -15: before the handlers
