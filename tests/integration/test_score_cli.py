"""``qtune-score``: per-sample scores from a checkpoint, in a file static strategies can read."""

import numpy as np
import torch
import torch.nn.functional as F

from qtune.cli.score import score
from qtune.strategies.scores_file import load_scores
from qtune.train import run


def test_scores_file_matches_the_checkpointed_model(make_cfg, tmp_path):
    from conftest import FAST, compose

    run(make_cfg(["experiment=digits", "epochs=2"], "train"))
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    out = tmp_path / "scores.npz"
    cols = score(compose(FAST + ["experiment=digits", f"ckpt_path={ckpt}", f"out={out}"], config_name="score"))
    assert out.is_file()
    n = len(cols["sample_id"])
    assert list(cols["sample_id"]) == list(range(n))
    assert {"aum", "forgetting", "el2n", "loss", "entropy"} <= set(cols)
    # independent reference: the checkpoint's weights, plain cross entropy and softmax formulas
    from qtune.data.digits import build_digits_task
    from qtune.models.classifier import build_mlp

    bundle = build_digits_task(compose(FAST + ["experiment=digits"]).data)
    model = build_mlp(compose(FAST + ["experiment=digits"]).model, 64, 10)
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")})
    model.eval()
    batch = bundle.collate([bundle.train[i] for i in range(n)])
    with torch.no_grad():
        logits = model(batch["inputs"]).squeeze(1)
    ce = F.cross_entropy(logits, batch["labels"].view(-1), reduction="none")
    np.testing.assert_allclose(cols["loss"], ce.numpy(), rtol=1e-4, atol=1e-5)
    p = logits.softmax(-1)
    el2n = (p - F.one_hot(batch["labels"].view(-1), 10)).norm(dim=-1)
    np.testing.assert_allclose(cols["el2n"], el2n.numpy(), atol=2e-3)
    # the file round-trips through the loader strategies use
    torch.testing.assert_close(load_scores(out, n, "el2n"), torch.from_numpy(cols["el2n"]).double(), check_dtype=False)
