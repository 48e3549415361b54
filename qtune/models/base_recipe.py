"""The declared pretraining recipe of the tiny base (``model.base``): its types and ranges are
checked by ``qtune.config.schema`` before anything is built, and its defaults are the recipe
that ``base_cache`` hashes into the cache key."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Optional

from qtune.config.declared import knob
from qtune.data.skills import SKILLS


@dataclasses.dataclass
class BaseRecipe:
    """``model.base``: how the tiny base is pretrained (hashed into its cache key)."""

    seed: int = 0
    steps: int = knob(1200, ge=1)
    batch_size: int = knob(128, ge=1)
    pack: int = knob(1, ge=1)
    lr: float = knob(3e-3, gt=0.0, lt=math.inf)
    min_lr_ratio: float = knob(0.1, ge=0.0, le=1.0)
    warmup_steps: int = knob(100, ge=0)
    weight_decay: float = knob(0.1, ge=0.0, lt=math.inf)
    grad_clip: float = knob(1.0, gt=0.0, lt=math.inf)
    loss_on: Literal["answer", "all"] = "answer"
    skills: list[Literal[SKILLS]] = knob(list(SKILLS))
    max_digits: int = knob(2, ge=1)
    min_len: int = knob(2, ge=1)
    max_len: int = knob(6, ge=1)
    eval_items: int = knob(500, ge=1)
    log_every: Optional[int] = knob(100, ge=1, doc="not hashed: does not change the weights")
