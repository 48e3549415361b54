"""Scores files: JSON or NPZ with sample ids, never pickle, ids checked against the data."""

import json
import pickle

import numpy as np
import pytest
import torch

from qtune.strategies.scores_file import load_scores


def test_json_columns_reordered_by_sample_id(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"sample_id": [2, 0, 1], "el2n": [0.2, 0.0, None], "loss": [1, 2, 3]}))
    out = load_scores(p, 3, "el2n")
    assert out[0] == 0.0 and out[2] == pytest.approx(0.2) and torch.isnan(out[1])
    assert load_scores(p, 3, "loss").tolist() == [2.0, 3.0, 1.0]


def test_json_records_and_npz(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps([{"sample_id": 1, "aum": -0.5}, {"sample_id": 0, "aum": 0.25}]))
    assert load_scores(p, 2, "aum").tolist() == [0.25, -0.5]
    q = tmp_path / "s.npz"
    np.savez(q, sample_id=np.arange(3), forgetting=np.array([0, 2, 1]))
    assert load_scores(q, 3, "forgetting").tolist() == [0.0, 2.0, 1.0]


def test_errors_name_the_file(tmp_path):
    q = tmp_path / "s.npz"
    np.savez(q, sample_id=np.arange(3), el2n=np.zeros(3))
    with pytest.raises(ValueError, match="s.npz.*3 samples.*4"):
        load_scores(q, 4, "el2n")
    with pytest.raises(KeyError, match="available"):
        load_scores(q, 3, "aum")
    d = tmp_path / "dup.npz"
    np.savez(d, sample_id=np.array([0, 0, 1]), el2n=np.zeros(3))
    with pytest.raises(ValueError, match="dup.npz.*exactly once"):
        load_scores(d, 3, "el2n")
    with pytest.raises(FileNotFoundError):
        load_scores(tmp_path / "missing.npz", 3, "el2n")


def test_pickle_refused(tmp_path):
    pk = tmp_path / "s.pkl"
    pk.write_bytes(pickle.dumps({"sample_id": [0], "el2n": [1.0]}))
    with pytest.raises(ValueError, match="pickle"):
        load_scores(pk, 1, "el2n")
    obj = tmp_path / "obj.npz"
    np.savez(obj, sample_id=np.arange(2), el2n=np.array([1.0, None], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        load_scores(obj, 2, "el2n")
