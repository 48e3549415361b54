"""LoRA adapters (adapter=lora) on a tiny random Llama: what trains, the loss, the checkpoint,
exact resume, and the named errors for what peft cannot do."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from conftest import crash
from tiny_hf import ROWS, save_tiny_llama

from qtune.train import run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    model_dir = save_tiny_llama(root / "model", chat_template=True)
    data = root / "train.jsonl"
    data.write_text("\n".join(json.dumps(ROWS[i % 4]) for i in range(40)) + "\n")
    return model_dir, data


def _args(setup, *extra):
    model_dir, data = setup
    return [
        "model=hf",
        f"model.path={model_dir}",
        "data=jsonl",
        f"data.path={data}",
        "data.eval_fraction=0.2",
        "batch_size=8",
        "adapter=lora",
        "adapter.dropout=0.0",
        "optim.lr=1e-2",
        "eval.exact_match=false",
        *extra,
    ]


class Grab(L.Callback):
    """Keeps the module's weights at fit start and end."""

    def on_fit_start(self, trainer, pl_module):
        self.before = {k: v.detach().clone() for k, v in pl_module.model.named_parameters()}
        self.module = pl_module

    def on_fit_end(self, trainer, pl_module):
        self.after = {k: v.detach().clone() for k, v in pl_module.model.named_parameters()}


def test_only_adapter_weights_train_and_ckpt_holds_only_them(make_cfg, tmp_path, setup):
    grab = Grab()
    s = run(make_cfg(_args(setup, "epochs=1"), "a"), extra_callbacks=[grab])
    changed = {k for k in grab.before if not torch.equal(grab.before[k], grab.after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)  # B starts at zero: it must move
    trainable = {k for k, p in grab.module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in k for k in trainable)
    assert 0 < s["trainable_params"] < s["num_params"]
    p, pt, fwd = s["num_params"], s["trainable_params"], s["forward_tokens_trained"]
    assert s["flops_estimate"] == pytest.approx((4 * p + 2 * pt) * fwd)
    ckpt = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    keys = set(ckpt["state_dict"])
    assert keys == {f"model.{k}" for k in trainable}
    opt_params = [i for g in ckpt["optimizer_states"][0]["param_groups"] for i in g["params"]]
    assert len(opt_params) == len(trainable)


def test_loss_is_the_plain_response_cross_entropy(make_cfg, setup):
    from qtune.lightning.module import QTuneModule
    from qtune.pruning.loss import masked_token_mean
    from qtune.config.build import build_task_and_model

    bundle, model = build_task_and_model(make_cfg(_args(setup)))
    module = QTuneModule(model, kernel_backend="torch")
    batch = bundle.collate([bundle.train[i] for i in range(6)])
    stats = module.stats(batch)
    ours = masked_token_mean(stats.loss, stats.valid)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    plain = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6)


def test_resume_from_a_mid_run_checkpoint_gives_the_same_weights(make_cfg, tmp_path, setup):
    args = _args(
        setup,
        "epochs=2",
        "checkpoint.every_n_train_steps=2",
        "strategy=random",
        "strategy.keep_ratio=0.75",
        "adapter.dropout=0.1",
    )
    run(make_cfg(args, "full"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_cfg(args, "b"), extra_callbacks=[crash(step=5)])
    ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 4
    run(make_cfg(args + [f"ckpt_path={ckpt}"], "b"))
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=0)


def test_loading_refuses_a_missing_trainable_key(make_cfg, setup):
    from qtune.lightning.module import QTuneModule
    from qtune.config.build import build_task_and_model

    _, model = build_task_and_model(make_cfg(_args(setup)))
    module = QTuneModule(model)
    from qtune.lightning.trainable_state import drop_frozen

    state = drop_frozen(module, module.state_dict())
    assert not module.load_state_dict(state, strict=False).missing_keys  # frozen: not missing
    lora_key = next(k for k in state if "lora_A" in k)
    del state[lora_key]
    with pytest.raises(RuntimeError, match="missing trainable key"):
        module.load_state_dict(state, strict=False)


def test_lora_with_the_mlp_classifier_is_a_named_error(make_cfg):
    from qtune.config.build import build_task_and_model

    with pytest.raises(ValueError, match="peft cannot wrap model=mlp"):
        build_task_and_model(make_cfg(["experiment=digits", "adapter=lora"]))


def test_target_modules_matching_nothing_lists_the_linear_modules(make_cfg, setup):
    from qtune.config.build import build_task_and_model

    with pytest.raises(ValueError, match=r"matches none.*q_proj"):
        build_task_and_model(make_cfg(_args(setup, "adapter.target_modules=[nothing_here]")))


@pytest.mark.parametrize("strategy", ["full", "random", "el2n", "rs2", "seta", "qtuning", "ccs", "infobatch"])
def test_every_strategy_trains_lora_with_the_fused_head(make_cfg, setup, strategy):
    s = run(make_cfg(_args(setup, "epochs=2", f"strategy={strategy}", "model.fused_head=true"), strategy))
    assert s["samples_trained"] > 0 and s["eval"]["loss"] > 0
    assert s["trainable_params"] < s["num_params"]


def test_qtune_score_reads_a_lora_checkpoint(make_cfg, tmp_path, setup):
    from conftest import FAST, compose

    from qtune.cli.score import score

    run(make_cfg(_args(setup, "epochs=1"), "s"))
    ckpt = tmp_path / "s" / "checkpoints" / "last.ckpt"
    cols = score(compose(FAST + _args(setup) + [f"ckpt_path={ckpt}", f"out={tmp_path / 'x.npz'}"], config_name="score"))
    assert len(cols["sample_id"]) == 32 and (cols["loss"] > 0).all()


def test_lora_with_gradient_checkpointing_gets_adapter_gradients(make_cfg, setup):
    from qtune.config.build import build_task_and_model

    bundle, model = build_task_and_model(make_cfg(_args(setup, "model.gradient_checkpointing=true")))
    batch = bundle.collate([bundle.train[i] for i in range(4)])
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    assert any(bool(g.abs().sum() > 0) for n, g in grads.items() if "lora_B" in n)  # A: 0, B starts at 0
