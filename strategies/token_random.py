"""Token rule ``random``: a uniform random share of the response tokens, the control every
token rule must beat (Q-Tuning's "Random" token baseline).

The draw comes from a private generator seeded by (seed, epoch, step, rank), never the global
RNG, so a resumed run masks the same tokens and ranks draw independently. Drawn on the CPU and
moved to the batch's device, so the mask is the same on every device.
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


def random_token_mask(
    response_mask: torch.Tensor, keep_ratio: float, generator: torch.Generator, scope: str = "sequence"
) -> torch.Tensor:
    """bool[B, T]: ``keep_count`` response tokens per row (or per batch), uniformly at random."""
    u = torch.rand(response_mask.shape, generator=generator, dtype=torch.float64).to(response_mask.device)
    return drop_highest(u, response_mask, keep_ratio, scope)


@register_token_rule("random")
class RandomTokens(TokenRule):
    ratio_keys = {"keep_ratio": "keep"}
    statistics = ()

    def __init__(self, seed: int = 0, keep_ratio: float = 0.5, scope: str = "sequence") -> None:
        super().__init__(seed)
        self.keep_ratio = check_ratio(keep_ratio, "strategy.token.keep_ratio")
        self.scope = check_scope(scope, ("sequence", "batch"), "strategy.token.scope")

    def apply(self, inputs: TokenInputs) -> TokenDecision:
        g = token_generator(self.seed, inputs.epoch, inputs.step, inputs.rank)
        keep = random_token_mask(inputs.response_mask, self.keep_ratio, g, self.scope)
        return decision(keep.float(), inputs.response_mask, "kept", reweights=False)
