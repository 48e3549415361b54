"""Token rule ``tokencleaning``: TokenCleaning's fixed-model cleaning (arXiv 2502.01968).

A token's score is the influence of a reference model on it, ℓ_base − ℓ_ref (the loss of the
base model before SFT minus that of a reference fine-tuned on curated data): a token the
reference learned to predict is informative, one it finds no easier is likely noise. The top
``keep_ratio`` (``data_prop`` = 0.6) of the response tokens are trained, with the HF mean over
kept tokens. ``scope: global`` (the scripts' default) ranks every token of the data set: scores
are precomputed (in qtune-train, base − reference from a ``qtune-score token_losses`` file) and
the threshold over all of them is set once before training (``set_threshold``;
``token_scores.global_threshold``); ``sequence`` ranks within each row and can score online
from the two models' per-token losses.
Deviations: global ties at the threshold are all kept; self-evolving cleaning (rounds that swap
the reference) is not implemented.
"""

from __future__ import annotations

import math

import torch

from .base import check_ratio
from .token_base import TokenDecision, TokenInputs, TokenRule, check_scope, decision, drop_highest
from .token_registry import register_token_rule


def cleaning_score(base_loss: torch.Tensor, ref_loss: torch.Tensor) -> torch.Tensor:
    """ℓ_base − ℓ_ref per token (float64, detached)."""
    return base_loss.detach().double() - ref_loss.detach().double()


def tokencleaning_mask(
    score: torch.Tensor,
    response_mask: torch.Tensor,
    keep_ratio: float = 0.6,
    scope: str = "global",
    threshold: float | None = None,
) -> torch.Tensor:
    """bool[B, T]. ``global``: response tokens with score ≥ ``threshold`` (a data-set quantile
    computed elsewhere); ``sequence``: the ⌈r·|R_i|⌉ best of each row. NaN is never kept
    globally and ranks last in a row."""
    resp = response_mask.bool()
    s = score.double()
    if scope == "global":
        if threshold is None:
            raise ValueError("tokencleaning scope=global needs a threshold (token_scores.threshold_from_file)")
        return resp & (s >= float(threshold))
    return drop_highest(-torch.nan_to_num(s, nan=-torch.inf), resp, keep_ratio, scope)


@register_token_rule("tokencleaning")
class TokenCleaning(TokenRule):
    ratio_keys = {"keep_ratio": "keep"}
    statistics = ()

    def __init__(
        self, seed: int = 0, keep_ratio: float = 0.6, scope: str = "global", threshold: float | None = None
    ) -> None:
        super().__init__(seed)
        self.keep_ratio = check_ratio(keep_ratio, "strategy.token.keep_ratio")
        self.scope = check_scope(scope, ("global", "sequence"), "strategy.token.scope")
        self.threshold = None
        if threshold is not None:
            self.set_threshold(threshold)
        # global: precomputed scores from a file; sequence: base and reference losses online
        self.token_scores = self.scope == "global"
        self.base_loss = self.reference_loss = self.scope != "global"

    def set_threshold(self, threshold: float) -> None:
        if not math.isfinite(float(threshold)):
            raise ValueError(f"strategy.token.threshold={threshold!r} must be a finite number")
        self.threshold = float(threshold)

    def apply(self, inputs: TokenInputs) -> TokenDecision:
        if inputs.score is not None:
            score = inputs.score
        else:
            base, ref = self.require(inputs, "base_loss", "ref_loss")
            score = cleaning_score(base, ref)
        keep = tokencleaning_mask(score, inputs.response_mask, self.keep_ratio, self.scope, self.threshold)
        return decision(keep.float(), inputs.response_mask, "kept", reweights=False)

    def state_dict(self):
        return {"threshold": self.threshold}

    def load_state_dict(self, state):
        if state.get("threshold") is not None:
            self.set_threshold(state["threshold"])
