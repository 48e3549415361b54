"""The token-rule API: which tokens of the trained rows count in the loss, and with what weight.

A sample pruner (``PruningStrategy``) decides which samples train; a token rule decides, inside
the rows that train, how each response token enters the loss. The two compose: any sample
pruner with any token rule. A rule declares what it needs (:class:`TokenNeeds`: per-token
statistics of the policy, a reference model's per-token loss or KL, precomputed scores, its
ranking scope) so the engine computes exactly that, and :meth:`TokenRule.apply` is a pure
function of per-token tensors [B, T] (:class:`TokenInputs`) to a :class:`TokenDecision`:
detached weights (0 dropped, 1 kept, other values reweight), the loss denominator, an optional
differentiable additive term (ASFT's KL anchor) and counts. ``TokenDecision.reduce`` turns the
policy's per-token loss into the step loss. Nothing here synchronises with the host.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from .qtuning_rules import _rank_desc  # Q-Tuning's token ranking: one tie rule for both

# Per-token statistics of the policy a rule may read (the kernels' names; ``topk_entropy`` is
# the entropy of the renormalised top-K distribution, an optional kernel output).
TOKEN_RULE_STATISTICS = ("loss", "entropy", "topk_entropy", "p_label")
# How a selecting rule ranks tokens: within the micro-batch, within each sequence, against a
# threshold over the whole data set (precomputed), or not at all (reweighting rules).
SCOPES = ("batch", "sequence", "global", "none")
KINDS = ("select", "reweight")
# What the weighted loss sum is divided by: the kept response tokens of the micro-batch
# ("kept": Rho-1, TokenCleaning, the Q-Tuning convention) or all its response tokens
# ("response": DFT, EAFT and ASFT divide by every valid token whatever its weight).
NORMALIZERS = ("kept", "response")
# Directions of the per-token KL: "ref_policy" = KL(ref || policy) (ASFT), "policy_ref" =
# KL(policy || ref) (EKSFT's).
KL_DIRECTIONS = ("ref_policy", "policy_ref")


@dataclass(frozen=True)
class TokenNeeds:
    """What the engine must compute before :meth:`TokenRule.apply` (a rule's declaration).

    ``reference_loss``: a reference model's per-token NLL (no grad). ``reference_kl``: the
    direction of a per-token KL between the policy's and the reference's distributions, which
    must carry the policy's gradient (it is a loss term). ``base_loss``: the frozen initial
    model's per-token NLL. ``token_scores``: per-token scores from a file (``token_scores``
    module) plus a global threshold set on the rule before training.
    """

    statistics: tuple[str, ...] = ("loss",)
    top_k: int | None = None
    reference_loss: bool = False
    reference_kl: str | None = None
    base_loss: bool = False
    token_scores: bool = False
    scope: str = "none"

    @property
    def reference_model(self) -> bool:
        """True when a reference model must be loaded and forwarded every step."""
        return self.reference_loss or self.reference_kl is not None


@dataclass
class TokenInputs:
    """Per-token tensors [B, T] of the rows that train, in label coordinates.

    ``loss`` is the policy's NLL (it may carry gradient; rules read it detached). Fields a rule
    does not declare may be None. ``seed``/``epoch``/``step`` and ``sample_ids`` [B] (else
    ``rank``) seed random rules, so a resumed run draws the same tokens.
    """

    loss: torch.Tensor
    response_mask: torch.Tensor
    entropy: torch.Tensor | None = None
    topk_entropy: torch.Tensor | None = None
    p_label: torch.Tensor | None = None
    ref_loss: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    base_loss: torch.Tensor | None = None
    score: torch.Tensor | None = None
    sample_ids: torch.Tensor | None = None
    seed: int = 0
    epoch: int = 0
    step: int = 0
    rank: int = 0


@dataclass
class TokenDecision:
    """A rule's answer. ``weights`` [B, T] are detached and 0 off the response; ``extra``
    [B, T] (or None) is a differentiable per-token loss term, already masked and scaled, added
    to the weighted sum before the division by ``denominator`` (a 0-dim count)."""

    weights: torch.Tensor
    denominator: torch.Tensor
    normalizer: str
    tokens_kept: torch.Tensor  # response tokens with a non-zero weight
    tokens_trained: torch.Tensor  # tokens the loss trains: kept ones, every response one when reweighting
    response_tokens: torch.Tensor
    extra: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def reduce(self, token_loss: torch.Tensor, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        """The step loss: Σ (w·ℓ + extra)·sample_w / denominator (at least 1, so an all-dropped
        batch gives 0 with a zero gradient). Sample weights (InfoBatch) rescale a row's whole
        loss while the denominator stays a token count, as in
        ``qtune.pruning.loss.masked_token_mean``."""
        w = self.weights.to(token_loss.dtype)
        per_token = torch.where(w != 0, token_loss * w, torch.zeros_like(token_loss))  # 0·inf stays 0
        if self.extra is not None:
            per_token = per_token + self.extra.to(token_loss.dtype)
        if sample_weights is not None:  # [B], or already per token [B, T] (a packed batch)
            sw = sample_weights.to(token_loss.dtype)
            per_token = per_token * (sw if sw.dim() == per_token.dim() else sw.unsqueeze(-1))
        return per_token.sum() / self.denominator.to(token_loss.dtype).clamp(min=1.0)


def decision(
    weights: torch.Tensor,
    response_mask: torch.Tensor,
    normalizer: str,
    reweights: bool,
    extra: torch.Tensor | None = None,
    info: dict[str, Any] | None = None,
) -> TokenDecision:
    """Assemble a :class:`TokenDecision` from weights (zeroed off the response) and the rule's
    normaliser, with its counts."""
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer={normalizer!r}; choose one of {NORMALIZERS}")
    resp = response_mask.bool()
    w = torch.where(resp, weights.detach().to(torch.float32), torch.zeros((), device=resp.device))
    kept = (resp & (w != 0)).sum()
    n_resp = resp.sum()
    denom = kept if normalizer == "kept" else n_resp
    trained = n_resp if reweights else kept
    return TokenDecision(w, denom, normalizer, kept, trained, n_resp, extra, dict(info or {}))


def keep_count(n: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """max(1, ⌈keep_ratio·n⌉) where n > 0, else 0 (products within 1e-9 of an integer snap)."""
    n = n.to(torch.float64)
    k = torch.clamp(torch.ceil(torch.round(n * float(keep_ratio), decimals=9)), min=1.0)
    return torch.where(n > 0, torch.minimum(k, n), torch.zeros_like(n))


def drop_highest(drop_score: torch.Tensor, response_mask: torch.Tensor, keep_ratio: float, scope: str) -> torch.Tensor:
    """bool[B, T]: response tokens kept after dropping those with the highest ``drop_score``.

    Keeps ``keep_count`` of the response tokens of each row (``scope="sequence"``) or of the
    whole micro-batch (``"batch"``). NaN scores rank highest (dropped first); ties drop the
    earlier token first (row-major in batch scope), as Q-Tuning's ``token_mask`` does.
    """
    resp = response_mask.bool()
    if float(keep_ratio) >= 1.0:
        return resp.clone()
    key = torch.where(resp, torch.nan_to_num(drop_score.double(), nan=torch.inf), -torch.inf)
    if scope == "sequence":
        n = resp.sum(-1)
        drop_n = (n - keep_count(n, keep_ratio)).unsqueeze(-1)
        return resp & ~(_rank_desc(key) < drop_n)
    if scope == "batch":
        n = resp.sum()
        drop_n = n - keep_count(n, keep_ratio)
        return resp & ~(_rank_desc(key.flatten()) < drop_n).view_as(resp)
    raise ValueError(f"scope={scope!r} does not rank within a micro-batch; choose 'batch' or 'sequence'")


def check_scope(scope: str, allowed: tuple[str, ...], key: str) -> str:
    if scope not in allowed:
        raise ValueError(f"{key}={scope!r}; choose one of {allowed}")
    return scope


class TokenRule(ABC):
    """Base class. A subclass sets the class declarations below (instances may set them from
    their options) and implements :meth:`apply`. Options are constructor arguments; the
    registry builds a rule by name (``token_registry.build_token_rule``)."""

    name: ClassVar[str] = "base"
    kind: ClassVar[str] = "select"
    #: Ratio knobs, option name -> "keep" | "prune" (as ``PruningStrategy.ratio_keys``).
    ratio_keys: ClassVar[Mapping[str, str]] = MappingProxyType({})
    statistics: tuple[str, ...] = ("loss",)
    scope: str = "none"
    normalizer: str = "kept"
    top_k: int | None = None
    reference_loss: bool = False
    reference_kl: str | None = None
    base_loss: bool = False
    token_scores: bool = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def needs(self) -> TokenNeeds:
        return TokenNeeds(
            statistics=tuple(self.statistics),
            top_k=self.top_k,
            reference_loss=self.reference_loss,
            reference_kl=self.reference_kl,
            base_loss=self.base_loss,
            token_scores=self.token_scores,
            scope=self.scope,
        )

    @abstractmethod
    def apply(self, inputs: TokenInputs) -> TokenDecision:
        """The rule's decision on one micro-batch: a pure function of ``inputs``."""

    def require(self, inputs: TokenInputs, *names: str) -> list[torch.Tensor]:
        """The named inputs, or an error naming the rule and the missing field (the engine did
        not provide what the rule declared)."""
        out = []
        for n in names:
            value = getattr(inputs, n)
            if value is None:
                raise ValueError(f"token rule {self.name!r} needs TokenInputs.{n} (see its needs())")
            out.append(value)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"
