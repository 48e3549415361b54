"""The LM head on the positions that need statistics only (the response-only head).

On prompt-heavy SFT data most positions carry no label (-100), yet ``model(...).logits``
projects every position onto the vocabulary (B x T x H x V multiply-adds, B x T x V logits)
and the statistics are then zeroed there. Here the decoder runs on the whole batch (every
token still attends), its hidden states at the labelled positions (the response, or every
attended position for ``next_token_labels``) are gathered into [N, H], the head and the
statistics run on those N rows only, and the per-token statistics are scattered back to
[B, T - 1] with what the full head gives elsewhere (0, ``valid`` False). Gradients reach the
model through the gathered rows only, which are exactly the rows the full head's loss reaches.
transformers' ``logits_to_keep`` does this for positions shared by every row; response
positions differ per row, hence the gather.

This is exact only where ``model(x).logits`` is ``head(decoder(x).last_hidden_state)``: a
model that soft-caps or scales the logits, normalises after the decoder, or uses the head's
weight without calling it is not. :func:`head_split` checks that once per model on a 4-token
probe and the caller falls back to the full head where it does not hold.
"""

from __future__ import annotations

import warnings
import weakref

import torch

from qtune.data.sft import IGNORE_INDEX
from qtune.kernels import TokenStats, linear_token_stats, token_stats

_splits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_warned: set[str] = set()
PROBE_IDS = (0, 1, 1, 0)
NO_SPLIT = "the model has no get_decoder() / get_output_embeddings()"


def _last_hidden(out) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def probe_split(model) -> tuple[tuple[torch.nn.Module, torch.nn.Module] | None, str]:
    """((decoder, head), "") when the model's logits are its head applied to its decoder's
    last hidden state, else (None, why not). Hooks watch one forward of a 4-token probe: the
    decoder and the head must each run once, the head's input must be the decoder's output,
    and the logits must be the head's output, which the hook replaces by values spread over
    [-100, 100] so that any transform of it (soft-capping, scaling, slicing) shows."""
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if not callable(get_decoder) or not callable(get_head):
        return None, NO_SPLIT
    try:
        decoder, head = get_decoder(), get_head()
    except Exception as err:  # transformers raises for models without a decoder rule
        return None, f"get_decoder() failed ({type(err).__name__})"
    if not isinstance(decoder, torch.nn.Module) or not isinstance(head, torch.nn.Module) or decoder is model:
        return None, "the model's decoder or head is not a separate module"
    seen: dict[str, list] = {"hidden": [], "head_in": [], "head_out": []}

    def on_decoder(_mod, _args, out):
        seen["hidden"].append(_last_hidden(out))

    def on_head(_mod, args, out):
        fake = torch.linspace(-100.0, 100.0, out.numel(), device=out.device).flip(0).view(out.shape).to(out.dtype)
        seen["head_in"].append(args[0] if args else None)
        seen["head_out"].append(fake)
        return fake

    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", getattr(head, "weight", None))
    ids = torch.tensor([PROBE_IDS], device=weight.device if weight is not None else None)
    # in eval mode: no dropout, so the probe draws no random numbers (a resumed run, which
    # probes at another step, keeps the uninterrupted run's random stream); modes restored
    modes = [(m, m.training) for m in model.modules()]
    hooks = [decoder.register_forward_hook(on_decoder), head.register_forward_hook(on_head)]
    try:
        model.eval()
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    except Exception as err:
        return None, f"the probe forward failed ({type(err).__name__}: {str(err)[:120]})"
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes:
            m.training = training
    logits = getattr(out, "logits", None)
    if len(seen["hidden"]) != 1 or len(seen["head_out"]) != 1 or logits is None:
        return None, "the forward does not call its decoder and its head once each"
    hidden, head_in, fake = seen["hidden"][0], seen["head_in"][0], seen["head_out"][0]
    if head_in is None or head_in.shape != hidden.shape or not torch.equal(head_in, hidden):
        return None, "the head's input is not the decoder's last hidden state (a norm or mixing between them)"
    if logits.shape != fake.shape or not torch.equal(logits, fake.to(logits.dtype)):
        return None, "the forward transforms the head's output (e.g. logit soft-capping or scaling)"
    return (decoder, head), ""


def head_split(model) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """:func:`probe_split`, once per model object. A model with a decoder and a head that the
    probe refuses warns once with the reason; one without (a custom module, a DDP wrapper)
    quietly gets the full head."""
    try:
        if model in _splits:
            return _splits[model]
    except TypeError:  # not weak-referenceable: probe every time
        return probe_split(model)[0]
    split, why = probe_split(model)
    _splits[model] = split
    if split is None and why != NO_SPLIT and why not in _warned:
        _warned.add(why)
        warnings.warn(
            f"response-only LM head off for {type(model).__name__}: {why}; the full head is used "
            "(model.response_only_head=false silences this)",
            RuntimeWarning,
            stacklevel=3,
        )
    return split


def labelled_stats(
    hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, fused: bool = False, backend: str | None = None
) -> TokenStats:
    """Token statistics [B, T - 1] of ``head`` on the hidden states [B, T, H] at the positions
    whose (shifted) label is not -100; the other positions hold 0 and ``valid`` False, as
    ``token_stats`` gives them. ``fused`` hands the rows and the head's weight to
    ``linear_token_stats`` (no N x V logits); a head that is not a plain ``nn.Linear`` (a LoRA
    layer on the head) is called instead, since its weight alone is not its function."""
    b, width = labels.shape
    if hidden.shape[:2] != (b, width + 1):
        raise ValueError(f"hidden {tuple(hidden.shape)} does not match labels {tuple(labels.shape)} + 1 position")
    kwargs = {} if backend is None else {"backend": backend}
    valid = labels != IGNORE_INDEX
    rows, cols = valid.nonzero().unbind(1)
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows * (width + 1) + cols)
    y = labels[rows, cols]
    if fused and type(head) is torch.nn.Linear:
        part = linear_token_stats(h, head.weight, y, bias=head.bias, **kwargs)
    else:
        part = token_stats(head(h), y, **kwargs)
    at = rows * width + cols

    def place(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(b * width, device=x.device, dtype=x.dtype).index_put((at,), x).view(b, width)

    return TokenStats(*(place(x) for x in part[:6]), valid)
