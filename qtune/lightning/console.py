"""What ``qtune-train`` prints: each library message once, none a user cannot act on, the epochs
a budget buys on the progress bar, qtune's FLOPs estimate in the model summary, and a short
result table at the end.

The filters are targeted (a logger, a message), never a blanket ignore: a new warning from a
library still shows.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar
from lightning.pytorch.utilities.model_summary import get_human_readable_count

# library messages with nothing for a qtune user to do
QUIET_WARNINGS = (
    # torch 2.13 deprecates the LeafSpec class that Lightning's _pytree still builds
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # qtune's CSV log shares the run directory with Hydra's .hydra/ (and, resumed, its own log)
    r"Experiment logs directory .* exists and is not empty",
)


# Lightning's info lines about itself: an advertisement, and a note that qtune's summary is used
QUIET_INFO = ("litlogger", "Trainer already configured with model summary callbacks")


class _DropLightningNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(note in message for note in QUIET_INFO)


def quiet_libraries() -> None:
    """Lightning's own console handler printed every message a second time beside Hydra's
    root handlers (which also write the run's log file): with Hydra's in place, Lightning's
    goes. Lightning's notes above, the deprecations above and transformers' weight-loading
    progress bars (qtune saves and loads its own small models) are left out."""
    if logging.getLogger().handlers:
        lightning_logger = logging.getLogger("lightning")
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)
    notes = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLightningNotes) for f in notes.filters):
        notes.addFilter(_DropLightningNotes())
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


class QTuneModelSummary(RichModelSummary):
    """Lightning's summary counts FLOPs only for a module with an example input (0 here);
    qtune's own estimate per token stands in its place."""

    def __init__(self, grad_flops_per_token: float, forward_flops_per_token: float) -> None:
        super().__init__(max_depth=1, flops_per_token=(grad_flops_per_token, forward_flops_per_token))

    @staticmethod
    def summarize(
        summary_data,
        total_parameters,
        trainable_parameters,
        model_size,
        total_training_modes,
        total_flops=0,
        **summarize_kwargs,
    ) -> None:
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        table.add_column(" ", style="dim")
        for name, _ in columns[1:]:
            table.add_column(name, justify="right" if name == "Params" else "left")
        for row in zip(*(values for _, values in columns)):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        grad, forward = summarize_kwargs["flops_per_token"]
        console.print(
            f"[bold]Trainable params[/]: {get_human_readable_count(int(trainable_parameters))}   "
            f"[bold]Total params[/]: {get_human_readable_count(int(total_parameters))}   "
            f"[bold]Size[/]: {model_size:,.3f} MB\n"
            f"[bold]FLOPs per token[/] (qtune's estimate): {get_human_readable_count(int(grad))} "
            f"trained, {get_human_readable_count(int(forward))} scored (no gradient)"
        )


class QTuneProgressBar(RichProgressBar):
    """Under a compute budget the Trainer's max_epochs is only an upper bound: the bar shows
    the epochs the budget buys (re-estimated every epoch) and the share spent."""

    def __init__(self, budget=None) -> None:
        super().__init__()
        self.budget = budget

    def _get_train_description(self, current_epoch: int) -> str:
        if self.budget is None:
            return super()._get_train_description(current_epoch)
        last = self.budget.planned_epochs(current_epoch) - 1
        return f"Epoch {current_epoch}/{last} (budget {self.budget.progress:.0%} spent)"


def result_rows(summary: dict, run_dir: Path) -> list[tuple[str, str]]:
    """(what, value) rows of a finished run's summary."""
    evaluation = summary.get("eval") or {}
    rows = [
        (f"eval {k}", f"{v:.4f}")
        for k, v in evaluation.items()
        if k in ("exact_match", "token_f1", "accuracy", "loss") and isinstance(v, (int, float))
    ]
    n, epochs = summary["train_samples_total"], summary.get("epochs_run") or summary["epochs"]
    rows += [
        (
            "samples trained",
            f"{summary['samples_trained']:,.0f} of {n:,} x {epochs} epochs ({summary['realised_keep_ratio']:.2f})",
        ),
        ("tokens trained", f"{summary['tokens_trained']:,.0f}" + _token_keep(summary)),
        (
            "FLOPs vs full",
            f"{summary['flops_vs_full']:.3f}" + (f" (budget {summary['budget']})" if summary.get("budget") else ""),
        ),
        ("train time", f"{summary['train_time_s']:.1f} s"),
        ("run directory", str(run_dir)),
    ]
    return rows


def _token_keep(summary: dict) -> str:
    """The measured token keep ratio, when the run measured one and a token rule set it below 1."""
    ratio = summary.get("token_keep_ratio")
    if ratio is None or ratio >= 1.0:
        return ""
    return f" of {summary['response_tokens']:,.0f} response tokens ({ratio:.2f})"


def print_result(summary: dict, run_dir: Path) -> None:
    from rich import get_console
    from rich.table import Table

    table = Table(title=f"qtune: {summary['strategy']}, seed {summary['seed']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for row in result_rows(summary, run_dir):
        table.add_row(*row)
    get_console().print(table)
