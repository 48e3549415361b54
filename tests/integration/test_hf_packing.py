"""PruningMixin with packed batches: TRL's ``SFTTrainer(packing=True)`` (qtune packs each
epoch's kept samples) and ``padding_free=True``, transformers' ``DataCollatorWithFlattening``,
against unpacked runs of the same data at learning rate 0 in float64 (the model never changes, so every
sample's statistics are one number whatever batch it lands in)."""

from collections import Counter

import pytest
import torch
from tiny_hf import save_tiny_llama

from qtune.hf import PruningMixin

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

N, B, MAX_LEN = 32, 4, 24
WORDS = "one two three four five six seven eight nine ten red green blue".split()
OPTIONS = {"random": {"keep_ratio": 0.5}, "qtuning": {"sample_ratio": 0.25, "token_ratio": 0.5}}
FIELDS = ("loss", "entropy", "el2n", "p_label", "margin", "accuracy")


def chat_rows(n=N):
    """Prompt/completion pairs of 3 to 30 tokens; items 5 and 17 are longer than MAX_LEN."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(n):
        p, c = (int(x) for x in torch.randint(1, 8, (2,), generator=g))
        if i in (5, 17):
            p, c = 14, 14
        pick = torch.randint(0, len(WORDS), (p + c,), generator=g).tolist()
        rows.append(
            {"prompt": " ".join(WORDS[k] for k in pick[:p]), "completion": " " + " ".join(WORDS[k] for k in pick[p:])}
        )
    return rows


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("hfpack") / "llama")


def sft(
    model_dir,
    out,
    pruning,
    lr=0.0,
    epochs=2,
    rows=None,
    eval_rows=None,
    token=None,
    reference=None,
    attn=None,
    **config,
):
    """A pruned SFTTrainer; it records each training micro-batch's inputs per epoch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qtune.kernels import set_default_backend

    set_default_backend("torch")
    batches: dict[int, list[dict]] = {}

    class Recorded(PruningMixin, trl.SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training and "sample_id" in inputs:
                batches.setdefault(self._epoch, []).append({k: v.detach().cpu() for k, v in inputs.items()})
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.pad_token = tok.eos_token
    config.setdefault("max_length", MAX_LEN)
    config.setdefault("per_device_train_batch_size", B)
    config.setdefault("save_strategy", "no")
    args = trl.SFTConfig(
        output_dir=str(out),
        num_train_epochs=epochs,
        learning_rate=lr,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        **config,
    )
    torch.manual_seed(0)
    trainer = Recorded(
        model=AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float64, attn_implementation=attn),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows or chat_rows()),
        eval_dataset=None if eval_rows is None else datasets.Dataset.from_list(eval_rows),
        processing_class=tok,
        pruning=pruning,
        pruning_options=OPTIONS.get(pruning, {}),
        pruning_token=token,
        pruning_reference=reference,
    )
    trainer.recorded = batches
    return trainer


MODES = {
    "packing": {"packing": True},  # packing_strategy "bfd", TRL's default
    "padding_free": {"padding_free": True, "max_length": None},
    # qtune's per-sample sdpa (registered by importing qtune.hf) on TRL's packed rows
    "packing_segments": {"packing": True, "attn": "sdpa_segments"},
    "unpacked": {},  # the reference of "packing": long samples keep their first MAX_LEN tokens
    "unpacked_whole": {"max_length": None},  # the reference of "padding_free"
}
REFERENCE = {"packing": "unpacked", "padding_free": "unpacked_whole", "packing_segments": "unpacked"}


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory):
    """Two-epoch runs at learning rate 0, made once: ``runs(mode, pruning)``."""
    done = {}

    def get(mode, pruning):
        if (mode, pruning) not in done:
            trainer = sft(model_dir, tmp_path_factory.mktemp(mode), pruning, **MODES[mode])
            trainer.train()
            done[mode, pruning] = trainer
        return done[mode, pruning]

    return get


def trained_ids(batches: list[dict]) -> list[int]:
    return [i for b in batches for i in b["sample_id"].tolist()]


@pytest.mark.parametrize(
    "mode,pruning",
    [(m, p) for m in ("packing", "padding_free") for p in ("random", "qtuning")] + [("packing_segments", "qtuning")],
)
def test_packed_runs_score_every_sample_as_unpacked(runs, mode, pruning):
    packed, plain = runs(mode, pruning), runs(REFERENCE[mode], pruning)
    a, b = packed._pruning_store, plain._pruning_store
    assert torch.equal(a.seen_epoch, b.seen_epoch) and (a.seen_epoch == 1).any()
    assert torch.equal(a.num_tokens, b.num_tokens)
    for name in FIELDS:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-5, equal_nan=True)
    if mode == "packing_segments":
        assert packed.model.config._attn_implementation == "sdpa_segments"
    if mode != "padding_free":  # the two long samples were cut to MAX_LEN tokens, as TRL's BFD cuts them
        lengths = [len(x) for x in packed.train_dataset["input_ids"]]
        assert lengths[5] == lengths[17] == MAX_LEN and max(lengths) == MAX_LEN


@pytest.mark.parametrize("mode", ["packing", "padding_free"])
def test_random_half_trains_each_planned_sample_with_whole_samples_per_row(runs, mode):
    trainer = runs(mode, "random")
    lengths = [min(len(x), MAX_LEN) for x in trainer.train_dataset["input_ids"]]
    for epoch, entry in enumerate(trainer.pruning_history):
        plan = trainer.pruning_plans[epoch].sample_ids.tolist()
        batches = trainer.recorded[epoch]
        ids = trained_ids(batches)
        assert len(plan) == N // 2 and set(ids) == set(plan)  # every planned sample, no other
        assert entry["samples_trained"] == len(ids)  # pad repeats counted as trained
        for b in batches:  # each sample whole in one row, positions 0.. and its own tokens
            seg, pos = b["seg"], b["position_ids"]
            for k, sid in enumerate(b["sample_id"].tolist()):
                where = seg == k
                assert int(where.any(1).sum()) == 1 and int(where.sum()) == lengths[sid]
                assert pos[where].tolist() == list(range(lengths[sid]))
        if mode == "padding_free":  # B samples per flattened row, the plan padded to whole batches
            assert all(b["seg"].shape[0] == 1 for b in batches) and len(ids) == len(plan)
            continue
        rows = sum(b["seg"].shape[0] for b in batches)
        assert rows == len(batches) * B == -(-entry["packing_rows"] // B) * B  # batches of B rows
        assert all(int((b["seg"] >= 0).sum(1).max()) <= MAX_LEN for b in batches)
        repeats = Counter(ids)
        assert set(repeats.values()) <= {1, 2}  # only the pad rows' samples train twice
        assert entry["batches"] == len(batches) < -(-len(plan) // B)  # fewer steps than unpacked


@pytest.mark.parametrize("mode", ["packing", "padding_free"])
def test_qtuning_trains_a_quarter_of_each_batch_chosen_on_per_sample_scores(runs, mode):
    from qtune.strategies.qtuning_rules import split_samples

    trainer = runs(mode, "qtuning")
    store = trainer._pruning_store  # at learning rate 0: the scores each batch plan saw
    for epoch, entry in enumerate(trainer.pruning_history):
        batches = trainer.recorded[epoch]
        assert set(trained_ids(batches)) == set(range(N))  # every sample scored by its batch
        expected = 0
        for b in batches:
            ids = b["sample_id"]
            keep, _, _ = split_samples(store.loss[ids].exp(), store.entropy[ids], 0.25)
            expected += int(keep.sum())
            assert int(keep.sum()) >= max(1, round(0.25 * len(ids)))
        assert entry["samples_trained"] == expected
        assert 0 < entry["tokens_trained"] < store.num_tokens.sum()


def test_packing_a_pruned_epoch_packs_only_its_kept_samples(runs):
    trainer = runs("packing", "random")
    for epoch, entry in enumerate(trainer.pruning_history):
        lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
        plan = trainer.pruning_plans[epoch].sample_ids.tolist()
        assert entry["packing_tokens"] == sum(lengths[i] for i in plan)
        assert entry["packing_rows"] >= -(-entry["packing_tokens"] // MAX_LEN)


def test_el2n_scoring_pass_under_packing_scores_as_unpacked(model_dir, tmp_path):
    packed = sft(model_dir, tmp_path / "p", "el2n", packing=True)
    plain = sft(model_dir, tmp_path / "u", "el2n")
    for t in (packed, plain):
        t.train()
    assert packed.pruning_history[1]["scoring_tokens"] > 0
    assert packed.pruning_plans[1].sample_ids.tolist() == plain.pruning_plans[1].sample_ids.tolist()
    for name in FIELDS:
        torch.testing.assert_close(
            getattr(packed._pruning_store, name),
            getattr(plain._pruning_store, name),
            rtol=1e-5,
            atol=1e-5,
            equal_nan=True,
        )


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"packing": True, "packing_strategy": "wrapped"},
            r"packing_strategy='wrapped' cuts samples .* use packing_strategy='bfd'",
        ),
        (
            {"packing": True, "packing_strategy": "bfd_split"},
            r"packing_strategy='bfd_split' would split train_dataset item 5",
        ),
    ],
)
def test_packing_modes_that_cut_samples_are_refused_naming_the_mode(model_dir, tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        sft(model_dir, tmp_path, "random", **config)


@pytest.mark.parametrize("mode", ["packing", "padding_free"])
def test_a_rule_reading_a_reference_is_refused_on_packed_batches(model_dir, tmp_path, mode):
    with pytest.raises(
        ValueError, match=r"pruning_token='rho1' reads a reference .* \(packing=True, padding_free=True\)"
    ):
        sft(model_dir, tmp_path, "random", token="rho1", reference="self", **MODES[mode])
    sft(model_dir, tmp_path, "random", token="ppl", **MODES[mode])  # the policy's own statistics pack


def test_bfd_split_without_a_long_sample_packs_as_bfd(model_dir, tmp_path):
    rows = [r for i, r in enumerate(chat_rows()) if i not in (5, 17)]
    split = sft(
        model_dir, tmp_path / "s", "random", lr=1e-2, epochs=1, rows=rows, packing=True, packing_strategy="bfd_split"
    )
    bfd = sft(model_dir, tmp_path / "b", "random", lr=1e-2, epochs=1, rows=rows, packing=True)
    for t in (split, bfd):
        t.train()
    assert trained_ids(split.recorded[0]) == trained_ids(bfd.recorded[0])
    for (name, a), (_, b) in zip(split.model.named_parameters(), bfd.model.named_parameters()):
        assert torch.equal(a, b), name


def test_evaluation_under_packing_is_trls_own_and_gives_the_unpacked_loss(model_dir, tmp_path):
    """An eval set is TRL's (packed by TRL's BFD when packing=True); its loss is a token mean,
    so packing it changes nothing at learning rate 0 (one eval batch either way)."""
    eval_rows = chat_rows(40)[32:]
    losses = []
    for config in ({"packing": True}, {}):
        trainer = sft(model_dir, tmp_path, "random", epochs=1, eval_rows=eval_rows, **config)
        trainer.train()
        losses.append(trainer.evaluate()["eval_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-9)


# ---------------------------------------------------------------------------------------------
# DataCollatorWithFlattening with a plain Trainer


class VarItems(torch.utils.data.Dataset):
    """Items of 3 to 14 tokens, the first half of each the prompt (label -100)."""

    def __init__(self, n=N):
        g = torch.Generator().manual_seed(2)
        self.ids = [
            torch.randint(5, 40, (int(torch.randint(3, 15, (1,), generator=g)),), generator=g) for _ in range(n)
        ]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        labels = self.ids[i].clone()
        labels[: len(labels) // 2] = -100
        return {"input_ids": self.ids[i], "labels": labels}


def pad_collate(features):
    width = max(len(f["input_ids"]) for f in features)
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        n = len(f["input_ids"])
        out["input_ids"].append(torch.nn.functional.pad(f["input_ids"], (0, width - n)))
        out["attention_mask"].append(torch.arange(width) < n)
        out["labels"].append(torch.nn.functional.pad(f["labels"], (0, width - n), value=-100))
    return {k: torch.stack(v).long() for k, v in out.items()}


def plain_trainer(model_dir, out, pruning, collator):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from qtune.kernels import set_default_backend

    set_default_backend("torch")

    class Pruned(PruningMixin, Trainer):
        pass

    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=B,
        num_train_epochs=1,
        learning_rate=0.0,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        save_strategy="no",
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float64)
    return Pruned(
        model=model,
        args=args,
        train_dataset=VarItems(),
        data_collator=collator,
        pruning=pruning,
        pruning_options=OPTIONS[pruning],
    )


@pytest.mark.parametrize("pruning", ["random", "qtuning"])
def test_data_collator_with_flattening_scores_as_padded(model_dir, tmp_path, pruning):
    from transformers import DataCollatorWithFlattening

    flat = plain_trainer(model_dir, tmp_path / "f", pruning, DataCollatorWithFlattening(return_flash_attn_kwargs=True))
    padded = plain_trainer(model_dir, tmp_path / "p", pruning, pad_collate)
    for t in (flat, padded):
        t.train()
    assert flat.pruning_history[0]["samples_trained"] == padded.pruning_history[0]["samples_trained"]
    for name in FIELDS:
        a, b = getattr(flat._pruning_store, name), getattr(padded._pruning_store, name)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert (flat._pruning_store.seen_epoch == 0).sum() == (N // 2 if pruning == "random" else N)


def test_a_flattening_collator_without_positions_is_refused(model_dir, tmp_path):
    from transformers import DataCollatorWithFlattening

    with pytest.raises(ValueError, match="without position_ids, so attention would cross samples"):
        plain_trainer(model_dir, tmp_path, "random", DataCollatorWithFlattening(return_position_ids=False))


# ---------------------------------------------------------------------------------------------
# resume


# ---------------------------------------------------------------------------------------------
# resume

RESUME = {"packing": True, "per_device_train_batch_size": 2, "save_strategy": "steps", "save_steps": 1}


@pytest.fixture(scope="module")
def saved_run(model_dir, tmp_path_factory):
    """A packed random-half run that writes a checkpoint at every step."""
    out = tmp_path_factory.mktemp("saved")
    trainer = sft(model_dir, out, "random", lr=1e-2, **RESUME)
    trainer.train()
    return out, trainer


@pytest.mark.parametrize("where", ["inside epoch 0", "end of epoch 0", "inside epoch 1"])
def test_a_packed_run_resumes_from_a_checkpoint_to_the_same_weights_and_store(model_dir, saved_run, where):
    out, whole = saved_run
    first, second = (h["batches"] for h in whole.pruning_history)
    assert first >= 3 and second >= 2
    step = {"inside epoch 0": 2, "end of epoch 0": first, "inside epoch 1": first + 1}[where]
    resumed = sft(model_dir, out, "random", lr=1e-2, **RESUME)
    resumed.train(resume_from_checkpoint=str(out / f"checkpoint-{step}"))
    for (name, a), (_, b) in zip(whole.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name
    assert [h["batches"] for h in resumed.pruning_history] == [first, second]
    assert [h["samples_trained"] for h in resumed.pruning_history] == [
        h["samples_trained"] for h in whole.pruning_history
    ]
    for name in FIELDS:  # bit for bit (NaN: never trained)
        a, b = getattr(resumed._pruning_store, name), getattr(whole._pruning_store, name)
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_resuming_a_packed_checkpoint_mid_epoch_without_packing_is_refused(model_dir, saved_run):
    out, _ = saved_run
    unpacked = sft(model_dir, out, "random", lr=1e-2, per_device_train_batch_size=2)
    with pytest.raises(
        ValueError, match=r"mid-epoch with packing .*max_tokens_per_row.: 24.*this trainer packs with None"
    ):
        unpacked.train(resume_from_checkpoint=str(out / "checkpoint-2"))
