"""The FLOPs model of every run's accounting and of the compute budget.

With P the number of model parameters, P_t the trainable ones and a token any non-padding input
position: a token forwarded with a gradient costs 2·P forward + 2·P backward to the inputs +
2·P_t for the weight gradients, that is 4·P + 2·P_t (6·P in full fine-tuning; frozen weights,
e.g. a LoRA base, get no weight gradient); a token forwarded without one in scoring passes
costs 2·P. A token rule's reference model (P_ref parameters) forwarded without a gradient costs
2·P_ref per token: it is booked as P_ref/P scoring tokens (:func:`reference_scoring_tokens`), so
the summary's FLOPs and a compute budget spend it like any scoring pass. Attention's
sequence-length term is ignored (small at the lengths qtune's tasks use).
"""

from __future__ import annotations


def token_costs(num_params: int, trainable_params: int | None = None) -> tuple[float, float]:
    """(FLOPs per token forwarded with a gradient, per token forwarded without one). The
    backward pass costs 2·P for the input gradients plus 2·P_trainable for the weight
    gradients, so with frozen weights (LoRA) a gradient token costs 4·P + 2·P_trainable."""
    trainable = num_params if trainable_params is None else trainable_params
    return 4.0 * num_params + 2.0 * trainable, 2.0 * num_params


def flops_estimate(
    num_params: int, forward_tokens: float, scoring_tokens: float, trainable_params: int | None = None
) -> float:
    grad, forward = token_costs(num_params, trainable_params)
    return grad * forward_tokens + forward * scoring_tokens


def reference_scoring_tokens(tokens, reference_params: int, num_params: int):
    """``tokens`` forwarded through a model of ``reference_params`` parameters, in scoring
    tokens of the trained model (P_ref/P each): 2·P_ref FLOPs per token."""
    ratio = float(reference_params) / max(float(num_params), 1.0)
    return tokens.double() * ratio if hasattr(tokens, "double") else float(tokens) * ratio
