"""The strategy API: a strategy decides, the engine executes.

A strategy answers two questions. Once per epoch, :meth:`PruningStrategy.epoch_plan` says which
sample ids to visit and, optionally, a loss weight per id. Optionally, once per micro-batch,
:meth:`PruningStrategy.batch_plan` says which samples of the batch get a gradient and which of
their tokens count in the loss. Both read only the context they are given (scores, epoch, seed),
so a plan is a pure function of state and can be recomputed on any rank or after a resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch


def check_ratio(value: float, key: str) -> float:
    """Validate a ratio in (0, 1]; the error names the config key the value came from."""
    try:
        if isinstance(value, bool):  # float(True) is 1.0: a flag is not a ratio
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r} is not a number; expected a ratio in (0, 1]") from None
    if not (0.0 < v <= 1.0):
        raise ValueError(f"{key}={value} is out of range; expected a ratio in (0, 1]")
    return v


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    """A private RNG seeded by (seed, epoch): never the global one, so plans are reproducible."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + int(salt)) % (2**63 - 1))
    return g


@runtime_checkable
class SampleStatistics(Protocol):
    """Each sample's last statistics, indexed by ``sample_id`` (float tensors [N], NaN where a
    sample has no score yet): what an epoch plan reads. The pruning core's statistics store
    (``qtune.pruning.statistics_store.StatisticsStore``) is one; a test may pass any object with these."""

    num_samples: int
    loss: torch.Tensor  # mean response-token loss
    entropy: torch.Tensor  # mean response-token predictive entropy
    el2n: torch.Tensor  # mean L2 norm of softmax minus one-hot
    p_label: torch.Tensor  # mean probability of the label token
    margin: torch.Tensor
    accuracy: torch.Tensor
    num_tokens: torch.Tensor  # long [N]: response tokens scored
    seen_epoch: torch.Tensor  # long [N]: the epoch of the last score, -1 never scored
    forgetting: torch.Tensor  # long [N]: learned -> forgotten transitions

    @property
    def ppl(self) -> torch.Tensor: ...

    @property
    def aum(self) -> torch.Tensor: ...


@dataclass
class EpochContext:
    """What a strategy may read when it plans an epoch."""

    epoch: int
    max_epochs: int
    num_samples: int
    seed: int
    scores: SampleStatistics | None


@dataclass
class EpochPlan:
    """Sample ids to visit this epoch (any order; the sampler shuffles) and optional weights.

    ``weights[i]`` multiplies the loss of ``sample_ids[i]``; None means all ones.
    ``info`` holds numbers worth logging (floats or ints only).
    """

    sample_ids: torch.Tensor
    weights: torch.Tensor | None = None
    info: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sample_ids = torch.as_tensor(self.sample_ids, dtype=torch.long).flatten()
        if self.weights is not None:
            self.weights = torch.as_tensor(self.weights, dtype=torch.float32).flatten()
            if self.weights.numel() != self.sample_ids.numel():
                raise ValueError(f"epoch plan has {self.sample_ids.numel()} ids but {self.weights.numel()} weights")


@dataclass
class BatchStats:
    """Per-sample and per-token statistics of one micro-batch, from a no-grad scoring pass.

    Token tensors are [B, T] aligned with the (shifted) labels; ``response_mask`` is True where
    the token is a response token that would count in the loss.
    """

    sample_ids: torch.Tensor  # [B]
    sample_loss: torch.Tensor  # [B] mean NLL over response tokens
    sample_ppl: torch.Tensor  # [B] exp(sample_loss)
    sample_entropy: torch.Tensor  # [B] mean entropy over response tokens
    token_loss: torch.Tensor  # [B, T]: on response tokens (every attended one under entropy_scope "all"), else 0
    token_entropy: torch.Tensor  # [B, T]: as token_loss
    response_mask: torch.Tensor  # [B, T] bool
    attention_mask: torch.Tensor | None = None  # [B, T] bool, non-padding positions
    epoch: int = 0
    step: int = 0


@dataclass
class BatchPlan:
    """Which samples of a micro-batch train (``keep`` [B] bool) and which tokens count.

    ``token_mask`` [B, T] (bool or float weights) applies to the kept rows; None keeps all
    response tokens. ``info`` holds per-batch numbers worth logging.
    """

    keep: torch.Tensor
    token_mask: torch.Tensor | None = None
    info: dict[str, float] = field(default_factory=dict)


class PruningStrategy:
    """Base class. Subclasses override :meth:`epoch_plan` and/or :meth:`batch_plan`.

    The class attributes below are the strategy's contract: what it needs from the engine and
    which options are its ratio knobs. The engine, the grid runner and the report read them, so
    they are declared, never probed; the registry checks them (``contract.check_contract``)
    when a subclass registers. Allowed values are in :mod:`qtune.strategies.contract`.
    """

    name: ClassVar[str] = "base"
    #: Plans batches: the engine scores every micro-batch and calls :meth:`batch_plan` before
    #: the gradient step. (An epoch-level scoring pass is :meth:`needs_scoring_pass` instead.)
    uses_batch_plan: ClassVar[bool] = False
    #: With a batch plan, how the batch is scored: "separate" (a no-grad scoring pass before
    #: the backward, then forward and backward of the kept rows) or "reuse" (one forward with
    #: gradients; the plan only masks the loss). An instance may set it from its options.
    batch_scoring: str = "separate"
    #: Statistics the plans read (names in ``contract.STATISTICS``), for documentation and
    #: checks; the engine computes all of them in one kernel call whatever is declared.
    statistics: tuple[str, ...] = ()
    #: Tokens that ``BatchStats.sample_entropy`` averages: "response" or "all" (attended).
    entropy_scope: str = "response"
    #: What the loss divides by: "response" (kept response tokens) or "all_attended".
    loss_denominator: str = "response"
    #: Ratio knobs, option name -> "keep" | "prune" | "shift" (``contract.RATIO_KINDS``), in
    #: the order a ratio grid sets them: the first keep/prune knob takes a grid ratio.
    ratio_keys: ClassVar[Mapping[str, str]] = MappingProxyType({})
    #: Options that were renamed, old name -> new name: the old one is refused naming the new.
    renamed_options: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    # -- planning -----------------------------------------------------------------------
    def needs_scoring_pass(self, ctx: EpochContext) -> bool:
        """True when the engine must score every training sample (no grad) before this epoch."""
        return False

    def epoch_plan(self, ctx: EpochContext) -> EpochPlan:
        """The sample ids (and optional weights) to visit in epoch ``ctx.epoch``; by default
        every sample (a strategy that only prunes inside batches needs nothing more)."""
        return EpochPlan(torch.arange(ctx.num_samples))

    def batch_plan(self, stats: BatchStats) -> BatchPlan | None:
        return None

    def warmup_cost(self) -> dict[str, int]:
        """What the strategy must run before it can prune: ``epochs`` on all the data and
        ``scoring_passes`` (no-grad passes over every sample). A compute budget smaller than
        that is refused up front rather than spent on a warm-up that never reaches pruning."""
        return {"epochs": 0, "scoring_passes": 0}

    # -- presentation (what qtune-report asks instead of knowing strategies by name) ------------
    #: Trains every sample every epoch with no scoring: the run that compute is measured against.
    full_data: ClassVar[bool] = False

    @classmethod
    def plane_rank(cls, options: Mapping[str, Any]) -> int | None:
        """How fit a run with these options is to draw the error-uncertainty plane and the
        token viewer (lower first; None: only when no strategy claims them)."""
        return None

    @classmethod
    def format_option(cls, key: str, value: Any) -> str | None:
        """An option's value as a report label shows it; None: the report's plain format."""
        return None

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Anything beyond the constructor arguments that the next plan depends on."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"
