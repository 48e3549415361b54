"""A small MLP classifier shaped like a one-token language model.

Its logits come out as [B, 1, C] with labels [B, 1], so the engine's per-token statistics,
masks and loss treat a classification sample as a single (unshifted) token with no special path.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


class MLPClassifier(nn.Module):
    def __init__(
        self, in_features: int, num_classes: int, hidden_sizes: Sequence[int] = (256, 128), dropout: float = 0.1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden_sizes:
            layers += [nn.Linear(width, int(h)), nn.GELU(), nn.Dropout(dropout)]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.num_classes = num_classes

    def forward(self, inputs: torch.Tensor, **unused: Any) -> torch.Tensor:
        """``inputs`` [B, F] -> logits [B, 1, C]; extra batch keys (labels, ids) are ignored."""
        return self.net(inputs).unsqueeze(1)


def build_mlp(cfg: Any, in_features: int, num_classes: int) -> MLPClassifier:
    """MLP from a ``conf/model/mlp.yaml`` node; sizes of the data come from the task bundle."""
    return MLPClassifier(
        in_features,
        num_classes,
        hidden_sizes=list(cfg.get("hidden_sizes", (256, 128))),
        dropout=float(cfg.get("dropout", 0.1)),
    )
