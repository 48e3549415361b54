"""``qtuning``: Q-Tuning's quadrant triage of samples and tokens (Wang et al. 2025, §2).

Crossing a sample's perplexity (how wrong the model is) with its predictive entropy (how unsure)
gives four kinds of data: confidently wrong (Q2, a correctable misconception: train, but drop
its locally noisy tokens), right but unsure (Q4, calibration: train whole), right and sure (Q3,
redundant) and wrong and unsure (Q1, likely noise): dropped. The pure rules live in
``qtuning_rules``; this class applies them per micro-batch (``level: batch``, the paper) or to
the whole statistics store once per epoch (``level: epoch``, a qtune extension), and makes the
quadrant actions configurable (``policy``, a second extension).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from .base import BatchPlan, BatchStats, EpochContext, EpochPlan, PruningStrategy, check_ratio
from .contract import ENTROPY_SCOPES, LOSS_DENOMINATORS, SCORING
from .counting import check_fraction
from .qtuning_rules import (  # noqa: F401  (re-exported: public as qtuning.*)
    NORMALIZE,
    like_quadrant,
    normalize_scores,
    quadrants_at,
    smoothed_token_scores,
    split_samples,
    token_mask,
    token_mask_batch_code,
)
from .qtuning_epoch import in_quadrants, split_samples_epoch
from .registry import register_strategy

ACTIONS = ("keep", "prune", "drop")
DEFAULT_POLICY = {"q1": "drop", "q2": "prune", "q3": "drop", "q4": "keep"}
POLICY_LETTERS = {"keep": "K", "prune": "P", "drop": "D"}
_CHOICES = {
    "level": ("batch", "epoch"),
    "batch_scoring": SCORING,
    "entropy_scope": ENTROPY_SCOPES,
    "token_budget": ("per_sample", "batch_code"),
    "loss_denominator": LOSS_DENOMINATORS,
    "normalize": NORMALIZE,
}


def parse_policy(policy: Mapping[Any, str] | None) -> dict[int, str]:
    """{1..4: action}; keys may be q1/Q1/1. Missing quadrants take the paper's default."""
    out = {int(k[1]): v for k, v in DEFAULT_POLICY.items()}
    for key, action in dict(policy or {}).items():
        q = str(key).lower().lstrip("q")
        if q not in ("1", "2", "3", "4"):
            raise ValueError(f"strategy.policy key {key!r}: expected q1, q2, q3 or q4")
        if action not in ACTIONS:
            raise ValueError(f"strategy.policy.{key}={action!r}: expected one of {ACTIONS}")
        out[int(q)] = action
    if all(a == "drop" for a in out.values()):
        raise ValueError("strategy.policy drops every quadrant: nothing would train")
    return out


@register_strategy("qtuning")
class QTuning(PruningStrategy):
    """Contract declarations set from the options: ``batch_scoring`` (separate: no-grad scoring
    pass, then forward and backward on kept rows only; reuse: the official single forward with
    gradient, masking only), ``entropy_scope`` (which tokens ``sample_entropy`` averages),
    ``loss_denominator`` (response: kept response tokens; all_attended: the code's, every
    attended kept position). ``level: epoch`` still plans batches: its token masks.
    """

    uses_batch_plan: ClassVar[bool] = True
    statistics = ("ppl", "entropy", "token_loss", "token_entropy")
    ratio_keys = {"sample_ratio": "keep", "token_ratio": "keep"}
    renamed_options = {"scoring": "batch_scoring"}  # "scoring" also names the scoring pass

    def __init__(
        self,
        seed: int = 0,
        sample_ratio: float = 0.25,
        token_ratio: float = 0.5,
        lam: float = 0.5,
        tol: float = 0.01,
        max_iter: int = 10,
        policy: Mapping[str, str] | None = None,
        normalize: str = "minmax",
        level: str = "batch",
        batch_scoring: str | None = None,
        entropy_scope: str = "response",
        token_budget: str = "per_sample",
        loss_denominator: str = "response",
        fill_up: bool = True,
    ) -> None:
        super().__init__(seed)
        self.sample_ratio = check_ratio(sample_ratio, "strategy.sample_ratio")
        self.token_ratio = check_ratio(token_ratio, "strategy.token_ratio")
        self.lam = check_fraction(lam, "strategy.lam", allow_one=True)
        self.tol, self.max_iter, self.fill_up = float(tol), int(max_iter), bool(fill_up)
        self.policy = parse_policy(policy)
        self.kept_quadrants = tuple(q for q, a in self.policy.items() if a != "drop")
        # an epoch-level plan still needs in-batch token PPL, which the training forward gives
        batch_scoring = batch_scoring or ("reuse" if level == "epoch" else "separate")
        opts = dict(
            level=level,
            batch_scoring=batch_scoring,
            entropy_scope=entropy_scope,
            token_budget=token_budget,
            loss_denominator=loss_denominator,
            normalize=normalize,
        )
        for key, value in opts.items():
            if value not in _CHOICES[key]:
                raise ValueError(f"strategy.{key}={value!r}; choose one of {_CHOICES[key]}")
            setattr(self, key, value)
        self._prune_ids: torch.Tensor | None = None  # level=epoch: bool[N], rows to token-prune

    # -- presentation -------------------------------------------------------------------------
    @classmethod
    def plane_rank(cls, options: Mapping[str, Any]) -> int | None:
        """The plane is Q-Tuning's: a run with the paper's policy (DPDK) first, since another
        policy moves the bisection's α."""
        policy = dict(options.get("policy") or DEFAULT_POLICY)
        return 0 if policy == DEFAULT_POLICY else 1

    @classmethod
    def format_option(cls, key: str, value: Any) -> str | None:
        """A policy reads as four letters, Q1..Q4 in order (K keep, P keep with token pruning,
        D drop): the paper's default is DPDK."""
        if key == "policy" and isinstance(value, Mapping) and set(value) == set(DEFAULT_POLICY):
            return "".join(POLICY_LETTERS.get(str(value[q]), "?") for q in ("q1", "q2", "q3", "q4"))
        return None

    # -- shared -----------------------------------------------------------------------------
    def _split(self, ppl: torch.Tensor, ent: torch.Tensor):
        """Sample stage → (keep, quadrant, alpha, prune_rows, filled)."""
        keep, quad, alpha = split_samples(
            ppl,
            ent,
            self.sample_ratio,
            self.tol,
            self.max_iter,
            kept_quadrants=self.kept_quadrants,
            normalize=self.normalize,
            fill_up=self.fill_up,
        )
        in_kept_quadrant = torch.zeros_like(keep)
        for q in self.kept_quadrants:
            in_kept_quadrant |= quad == q
        filled = keep & ~in_kept_quadrant
        acting = torch.where(filled, like_quadrant(ppl, ent, self.normalize).to(quad.device), quad)
        prune_q = [q for q, a in self.policy.items() if a == "prune"]
        prune_rows = torch.zeros_like(keep)
        for q in prune_q:
            prune_rows |= acting == q
        return keep, quad, alpha, prune_rows & keep, filled

    def _split_epoch(self, ppl: torch.Tensor, ent: torch.Tensor):
        """``_split`` over the whole store: the same answer in a few passes (``qtuning_epoch``);
        the quadrant comes back as int8."""
        keep, quad, alpha, ppl_like = split_samples_epoch(
            ppl,
            ent,
            self.sample_ratio,
            self.tol,
            self.max_iter,
            kept_quadrants=self.kept_quadrants,
            normalize=self.normalize,
            fill_up=self.fill_up,
        )
        filled = keep & ~in_quadrants(quad, self.kept_quadrants)
        prune_q = [q for q, a in self.policy.items() if a == "prune"]
        prune_rows = keep & ~filled & in_quadrants(quad, prune_q)
        if bool(filled.any()):  # a filled row acts as its like-quadrant
            if ppl_like is None:
                ppl_like = like_quadrant(ppl, ent, self.normalize) == 2
            if 2 in prune_q:
                prune_rows |= filled & ppl_like
            if 4 in prune_q:
                prune_rows |= filled & ~ppl_like
        return keep, quad, alpha, prune_rows, filled

    @staticmethod
    def _counts(quad: torch.Tensor, keep: torch.Tensor, filled: torch.Tensor) -> dict[str, Any]:
        info: dict[str, Any] = {f"q{q}": (quad == q).sum() for q in range(1, 5)}
        info.update(middle=(quad == 0).sum(), kept=keep.sum(), fill_up=filled.sum())
        return info

    # -- epoch level ----------------------------------------------------------------------------
    def needs_scoring_pass(self, ctx: EpochContext) -> bool:
        return self.level == "epoch"

    def epoch_plan(self, ctx: EpochContext) -> EpochPlan:
        n = ctx.num_samples
        if self.level == "batch":
            return EpochPlan(torch.arange(n), info={"planned_keep_ratio": 1.0})
        ppl, ent = ctx.scores.ppl.double(), ctx.scores.entropy.double()
        if not torch.isfinite(ppl).any():  # no scores (engine ran no pass): train everything
            self._prune_ids = None
            return EpochPlan(torch.arange(n), info={"planned_keep_ratio": 1.0, "unscored": n})
        keep, quad, alpha, prune_rows, filled = self._split_epoch(ppl, ent)
        self._prune_ids = prune_rows.cpu()
        ids = torch.nonzero(keep).flatten()
        per_quadrant = [int(torch.count_nonzero(quad == q)) for q in range(5)]
        info = {f"q{q}": per_quadrant[q] for q in range(1, 5)}
        info.update(
            middle=per_quadrant[0], kept=int(torch.count_nonzero(keep)), fill_up=int(torch.count_nonzero(filled))
        )
        if ids.numel() == 0:  # a policy that leaves nothing eligible: never plan an empty epoch
            ids, self._prune_ids, info["empty_fallback"] = torch.arange(n), None, 1
        info.update(
            alpha=float(alpha),
            prune_rows=int(torch.count_nonzero(prune_rows)),
            planned_keep_ratio=self.sample_ratio,
            realised_keep_ratio=ids.numel() / max(1, n),
        )
        return EpochPlan(ids, info=info)

    # -- batch level ----------------------------------------------------------------------------
    def _entropy(self, stats: BatchStats) -> torch.Tensor:
        if self.entropy_scope == "all" and stats.attention_mask is not None:
            att = stats.attention_mask.to(stats.token_entropy.dtype)
            return (stats.token_entropy * att).sum(-1) / att.sum(-1).clamp(min=1)
        return stats.sample_entropy

    def batch_plan(self, stats: BatchStats) -> BatchPlan:
        """Batch info values are 0-dim tensors on the batch's device (no host sync per step)."""
        resp = stats.response_mask.bool()
        has_signal = resp.any(-1)
        if self.level == "epoch":
            keep = torch.ones_like(has_signal)
            prune_rows = torch.zeros_like(has_signal)
            if self._prune_ids is not None:
                if self._prune_ids.device != resp.device:
                    self._prune_ids = self._prune_ids.to(resp.device)
                prune_rows = self._prune_ids[stats.sample_ids.to(resp.device).long()]
            info: dict[str, Any] = {}
        else:
            ppl = torch.where(has_signal, stats.sample_ppl.double(), torch.nan)
            ent = torch.where(has_signal, self._entropy(stats).double(), torch.nan)
            keep, quad, alpha, prune_rows, filled = self._split(ppl, ent)
            info = {**self._counts(quad, keep, filled), "alpha": alpha}
        if self.token_ratio >= 1.0:
            mask = resp.clone()
        elif self.token_budget == "per_sample":
            mask = token_mask(stats.token_loss.double().exp(), resp, prune_rows, self.token_ratio, self.lam)
        else:
            mask = token_mask_batch_code(
                stats.token_loss.double().exp(),
                resp,
                stats.attention_mask,
                keep,
                prune_rows,
                self.sample_ratio,
                self.token_ratio,
                self.lam,
            )
        mask = mask & keep.unsqueeze(-1)
        info.update(
            prune_rows=prune_rows.sum(),
            tokens_kept=mask.sum(),
            response_tokens=(resp & keep.unsqueeze(-1)).sum(),
            batch_size=keep.numel(),
            batches=1,
        )  # the engine sums info over an epoch: alpha / batches = mean alpha
        return BatchPlan(keep=keep, token_mask=mask, info=info)

    def state_dict(self) -> dict[str, Any]:
        return {"prune_ids": self._prune_ids}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._prune_ids = state.get("prune_ids")
