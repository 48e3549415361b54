"""Token rule ``random``: a uniform random share of the response tokens, the control every
token rule must beat (Q-Tuning's "Random" token baseline).

The draw comes from private generators, never the global RNG: one per row seeded by (seed,
epoch, step, sample id) when the batch's ids are given, so a row's draw depends neither on the
rank nor on the other rows (micro-batches of one optimizer step under gradient accumulation
draw independently), else one per batch seeded by (seed, epoch, step, rank). A resumed run
masks the same tokens. Drawn on the CPU and moved to the batch's device: the same mask on every
device.
"""

from __future__ import annotations

import torch

from .base import check_ratio
from .token_base import TokenDecision, TokenInputs, TokenRule, check_scope, decision, drop_highest
from .token_registry import register_token_rule


def token_generator(seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    """A private CPU generator for one micro-batch: distinct for every (seed, epoch, step, rank)."""
    g = torch.Generator()
    key = ((int(seed) * 1_000_003 + int(epoch)) * 1_000_033 + int(step)) * 10_007 + int(rank)
    g.manual_seed(key % (2**63 - 1))
    return g


def random_keys(shape: torch.Size, seed: int, epoch: int, step: int, rank: int = 0, sample_ids=None) -> torch.Tensor:
    """float64 uniform keys [B, T] on the CPU: per row from (seed, epoch, step, sample id) with
    ``sample_ids``, else from one generator of (seed, epoch, step, rank)."""
    if sample_ids is None:
        return torch.rand(shape, generator=token_generator(seed, epoch, step, rank), dtype=torch.float64)
    rows = [int(i) for i in torch.as_tensor(sample_ids).flatten().tolist()]
    if len(rows) != shape[0]:
        raise ValueError(f"{len(rows)} sample ids for {shape[0]} rows")
    keys = [torch.rand(shape[1:], generator=token_generator(seed, epoch, step, i), dtype=torch.float64) for i in rows]
    return torch.stack(keys) if keys else torch.zeros(shape, dtype=torch.float64)


def random_token_mask(
    response_mask: torch.Tensor, keep_ratio: float, keys: torch.Tensor, scope: str = "sequence"
) -> torch.Tensor:
    """bool[B, T]: the ``keep_count`` response tokens per row (or per batch) with the lowest keys."""
    return drop_highest(keys.to(response_mask.device), response_mask, keep_ratio, scope)


@register_token_rule("random")
class RandomTokens(TokenRule):
    ratio_keys = {"keep_ratio": "keep"}
    statistics = ()

    def __init__(self, seed: int = 0, keep_ratio: float = 0.5, scope: str = "sequence") -> None:
        super().__init__(seed)
        self.keep_ratio = check_ratio(keep_ratio, "strategy.token.keep_ratio")
        self.scope = check_scope(scope, ("sequence", "batch"), "strategy.token.scope")

    def apply(self, inputs: TokenInputs) -> TokenDecision:
        x = inputs
        keys = random_keys(x.response_mask.shape, self.seed, x.epoch, x.step, x.rank, x.sample_ids)
        keep = random_token_mask(x.response_mask, self.keep_ratio, keys, self.scope)
        return decision(keep.float(), inputs.response_mask, "kept", reweights=False)
