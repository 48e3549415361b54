"""``pruning_reference``: the reference the mixin's token rules compare with (``rho1``,
``tokencleaning``, ``asft``), declared once and built when the trainer is built.

    trainer = PrunedTrainer(..., pruning_token="rho1", pruning_reference="self")

The argument takes

- ``None`` (default): no reference; a rule that reads one is refused, naming ``pruning_reference``;
- ``"self"``: the starting model as the trainer is built, before any step: with a peft model its
  own forward with the adapters disabled (no copy), else a frozen copy (one more copy of the
  weights);
- a directory (``str`` or ``os.PathLike``): a Hugging Face model directory, a LoRA adapter
  saved alone, a finished qtune run or its ``final/`` (loaded once, frozen, in the trained
  model's dtype, moved to its device at the first step); or per-token losses written by
  :func:`write_token_losses` (recognised by their ``meta.json``), memory-mapped and refused
  unless written for this trainer's training set;
- a ``torch.nn.Module``: a loaded causal LM, frozen here and used as it is (its dtype);
- ``{"source": "self" | "path" | "file", "path": DIR}``: the same, spelled out.

Which rule takes which source, and the refusals, are qtune-train's ``reference.source``
(``qtune.pruning.reference_setup``), here naming the mixin's arguments. Each reference forward
is booked as P_ref/P scoring tokens (``pruning_totals``, ``pruning_budget``,
``pruning_flops``), a loss file's FLOPs before the first step. Under several processes each
rank runs the reference forward of its own micro-batches, so a path or module reference (and a
``self`` copy) is held on every rank; the ``self`` forward goes through the unwrapped model
(``accelerator.unwrap_model``), outside the DDP wrapper.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from qtune.hf.token_rules import HF_KEYS
from qtune.pruning.reference import Reference, count_params, eval_mode, freeze, has_adapters, path_reference
from qtune.pruning.reference_setup import (
    ReferenceKeys,
    check_reference_source,
    open_loss_file,
    reads_reference,
    token_step_for,
    training_fingerprint,
)
from qtune.pruning.token_loss_file import META
from qtune.pruning.token_loss_writer import check_right_padded, loss_file_meta, token_loss_columns
from qtune.pruning.token_loss_writer import write_token_losses as write_loss_dir

KEY = "pruning_reference"
WRITER = "qtune.hf.write_token_losses(trainer, LOSSES_DIR)"
HF_REFERENCE_KEYS = ReferenceKeys(
    declared="argument pruning_reference",
    self_='pruning_reference="self"',
    model="pruning_reference=MODEL_DIR",
    file="pruning_reference=LOSSES_DIR",
    writer=WRITER,
    writer_base="qtune.hf.write_token_losses(trainer, LOSSES_DIR, reference=MODEL_DIR, base=True)",
    tokens=HF_KEYS,
)


@dataclass(frozen=True)
class ReferenceSpec:
    """``pruning_reference`` read: its source (``none``, ``self``, ``path``, ``file``), the
    directory, or a loaded module (source ``path``)."""

    source: str = "none"
    path: str | None = None
    module: torch.nn.Module | None = None


def _directory(path) -> str:
    if not Path(path).expanduser().is_dir():
        raise FileNotFoundError(f"{KEY}={path}: no such directory")
    return str(Path(path).expanduser())


def reference_spec(value: Any) -> ReferenceSpec:
    """Read ``pruning_reference`` (forms in the module's docstring); a malformed value or a
    missing directory is refused naming the argument. Nothing is loaded."""
    if value is None:
        return ReferenceSpec()
    if isinstance(value, torch.nn.Module):
        return ReferenceSpec("path", module=value)
    if isinstance(value, str) and value == "self":
        return ReferenceSpec("self")
    if isinstance(value, (str, os.PathLike)):
        path = _directory(value)
        return ReferenceSpec("file" if (Path(path) / META).is_file() else "path", path)
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"source", "path"})
        if unknown:
            raise ValueError(f"{KEY}: unknown key(s) {unknown}; expected 'source' and 'path'")
        source, path = value.get("source"), value.get("path")
        if source not in ("self", "path", "file"):
            raise ValueError(f"{KEY}['source']={source!r}: expected 'self', 'path' or 'file'")
        if source == "self":
            if path is not None:
                raise ValueError(f"{KEY}={{'source': 'self'}} takes no 'path': it is the trainer's starting model")
            return ReferenceSpec("self")
        if not path:
            raise ValueError(f"{KEY}={{'source': {source!r}}} needs a 'path' (a directory)")
        return ReferenceSpec(source, _directory(path))
    raise TypeError(
        f"{KEY}={value!r}: expected 'self', a directory, a torch.nn.Module or {{'source': ..., 'path': ...}}"
    )


def check_reference_argument(rule, value: Any) -> ReferenceSpec:
    """``pruning_reference`` read and checked against the token rule (None: no rule), as
    qtune-train checks ``reference.source``: refusals are
    :class:`~qtune.pruning.reference_setup.ReferenceRefusal` (a ``ValueError``). A reference
    that no rule reads is not loaded, with a warning."""
    spec = reference_spec(value)
    if rule is not None:
        check_reference_source(rule, spec.source, HF_REFERENCE_KEYS)
    if spec.source != "none" and (rule is None or not reads_reference(rule.needs())):
        what = "no token rule reads it" if rule is None else f"pruning_token={rule.name!r} reads no reference"
        warnings.warn(f"{KEY} is given but {what}: it is not loaded", stacklevel=3)
    return spec


def model_reference(spec: ReferenceSpec, like: torch.nn.Module) -> Reference:
    """The ``path`` reference: the module given, or the model loaded from the directory."""
    from qtune.models.reference_model import check_vocabulary, load_reference_model

    if spec.module is not None:
        name = type(spec.module).__name__
        check_vocabulary(spec.module, like, f"{KEY}=<{name}>")
        return Reference("path", freeze(spec.module), count_params(spec.module), None, {"module": name})
    module, info = load_reference_model(spec.path, like, key=KEY)
    return path_reference(module, spec.path, info)


def build_token_step(rule, spec: ReferenceSpec, model: torch.nn.Module, train_dataset, num_params: int):
    """The trainer's :class:`~qtune.pruning.token_step.TokenStep` (None without a rule), its
    reference loaded now: call when the trainer is built, before any step."""
    if rule is None:
        return None
    return token_step_for(
        rule,
        model,
        source=spec.source,
        load_reference=lambda: model_reference(spec, model),
        open_losses=lambda: open_loss_file(
            spec.path,
            train_dataset,
            training_fingerprint(train_dataset),
            KEY,
            writer=WRITER,
            base_option="qtune.hf.write_token_losses(..., base=True)",
        ),
        num_params=num_params,
    )


def token_fn_for(step, model: torch.nn.Module, stats_fn: Callable, unwrap: Callable):
    """``train_step``'s ``token_fn``: ``step`` on ``model`` (what ``compute_loss`` got, maybe a
    DDP wrapper), its reference forwards through ``unwrap(model)`` (the model itself: a
    ``self`` reference disables the adapters of the peft model, not of its wrapper)."""
    if step is None:
        return None
    policy = unwrap(model)

    def token_fn(batch: dict, **when):
        if step.losses is not None:
            check_right_padded(batch, KEY)
        return step(model, stats_fn, batch, reference_policy=policy, **when)

    return token_fn


def run_flops(totals: dict, num_params: int, trainable_params: int, step) -> float:
    """FLOPs spent so far, as qtune-train's ``flops_estimate``: trained tokens, scoring passes
    and reference forwards (``totals``), plus a loss file's cost."""
    from qtune.runs.flops import flops_estimate

    spent = flops_estimate(
        num_params, totals.get("forward_tokens", 0.0), totals.get("scoring_tokens", 0.0), trainable_params
    )
    return spent + (step.file_flops if step is not None else 0.0)


def write_token_losses(trainer, out, reference: Any = "self", base: bool = False, batch_size: int | None = None):
    """Write per-token losses of ``trainer``'s training set to the directory ``out`` (whole or
    not at all), for ``pruning_reference=out`` in a trainer built on the same data: the
    reference's (``ref_loss``; ``reference``: ``"self"``, a model directory or qtune run, or a
    module) and, with ``base=True``, the trainer's starting model's (``base_loss``: what
    TokenCleaning's global ranking needs). One no-grad pass over the data in id order, in one
    process, through the trainer's own collator (right-padded rows); its FLOPs are written into
    the file and spent by the run that reads it. Returns the file's ``meta.json`` content."""
    if trainer.args.world_size > 1:
        raise ValueError("write_token_losses runs in one process; train with the file on several")
    spec = reference_spec(reference)
    if spec.source not in ("self", "path"):
        raise ValueError(
            f"write_token_losses(reference={reference!r}): the losses come from a model: 'self' (the "
            "trainer's starting model), a model directory or qtune run, or a torch.nn.Module"
        )
    model = trainer.model
    device = next(model.parameters()).device
    start = self_forward(model)
    forwards = {"ref_loss": start if spec.source == "self" else model_reference(spec, model)}
    if base:
        forwards["base_loss"] = start
    data = trainer.train_dataset
    if hasattr(data, "column_names"):  # a datasets.Dataset: the columns the collator takes
        data = trainer._remove_unused_columns(data, description="training")
    size = int(batch_size or trainer.args.per_device_eval_batch_size)
    with eval_mode(model):
        cols, lengths, tokens = token_loss_columns(forwards, model, data, trainer.data_collator, size, device)
    meta = loss_file_meta(forwards, cols, tokens, training_fingerprint(trainer.train_dataset))
    write_loss_dir(out, cols, lengths, meta)
    return {**meta, "columns": list(cols)}


def self_forward(model: torch.nn.Module) -> Reference:
    """The starting model as it is, without a copy (it is not trained meanwhile): a peft model
    with its adapters disabled, else the model itself."""
    if has_adapters(model):
        return Reference("self", None, count_params(model, frozen_only=True), info={"copy": False})
    return Reference("self", model, count_params(model), info={"copy": False})
