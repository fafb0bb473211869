"""The training progress bar: Lightning's, labelled by what bounds a run here, its steps."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

LABEL = "training"


class StepRichBar(RichProgressBar):
    """Lightning's rich bar (steps done of `max_steps`, time, rate, loss) labelled "training" where it said "Epoch
    0/-2": a run is bounded by steps over an endless stream of windows, so max_epochs is -1, and the label read as
    a bug."""

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{LABEL:{len(self.validation_description)}}"  # as wide as "Validation": the bar does not jump


class StepTQDMBar(TQDMProgressBar):
    """Lightning's tqdm bar (its choice without `rich`) labelled "training", not "Epoch 0"."""

    def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
        # Lightning's own, but for the label: calling it first drew a line "Epoch 0: 0%" in logs
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=convert_inf(self.total_train_batches))
        self.train_progress_bar.initial = 0
        self.train_progress_bar.set_description(LABEL)


def progress_bar(trainer_args: dict[str, Any], callbacks: list[Any]) -> list[Any]:
    """The bar Lightning would add, labelled by steps: [] when disabled or one is among `callbacks`."""
    if trainer_args.get("enable_progress_bar", True) is False or any(isinstance(c, ProgressBar) for c in callbacks):
        return []
    return [StepRichBar() if _RICH_AVAILABLE else StepTQDMBar()]
