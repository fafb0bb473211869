"""The one LightningModule every modality trains through: next-token cross-entropy on a Transformer."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from arseq.errors import DataError
from arseq.models.transformer import Transformer, TransformerConfig
from arseq.train.checkpoint_io import clean_checkpoint_folder
from arseq.train.optim import OptimConfig, lr_factor, make_optimizer

LN2 = math.log(2)


class ARModule(L.LightningModule):
    """Hyperparameters are plain dicts so checkpoints load with `torch.load(weights_only=True)`.

    `meta` (tokenizer state, modality and data options) is opaque here: it is stored in every
    checkpoint under "arseq" so that a checkpoint alone is enough to generate.
    """

    def __init__(self, model: dict[str, Any], optim: dict[str, Any], meta: dict[str, Any] | None = None, compile: bool = False):
        super().__init__()
        self.save_hyperparameters({"model": model, "optim": optim})
        self.model = Transformer(TransformerConfig(**model))
        self.optim = OptimConfig(**optim)
        self.meta = meta or {}
        self.compile_model = compile
        self._tick: float | None = None

    def configure_model(self) -> None:
        # In place (nn.Module.compile), after any strategy has set the model up: parameter names, hooks and
        # checkpoints stay as without compiling. Calling it again (a second fit) just compiles afresh.
        if self.compile_model:
            self.model.compile()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self._loss(x, y)
        if not torch.isfinite(loss):  # diverged: stop before a NaN model is saved (or kept as "best")
            raise DataError(
                f"training diverged: the loss is {loss.item()} at step {self.trainer.global_step} "
                f"(lower optim.lr, now {self.optim.lr:g}; last.ckpt keeps the last finite state)"
            )
        self.log("train/loss", loss, prog_bar=True)
        now = time.perf_counter()
        if self._tick is not None and self.trainer.global_step % self.trainer.log_every_n_steps == 0:  # type: ignore[attr-defined]  # set by Lightning's logger connector
            tokens = x.numel() * self.trainer.world_size
            self.log_dict({"train/tokens_per_s": tokens / (now - self._tick), "train/bits_per_token": loss.detach() / LN2})
        self._tick = now
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = torch.zeros(2, dtype=torch.float64, device=self.device)  # summed NLL, token count

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y, _ = batch
        logits = self.model(x)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100, reduction="sum")
        self._val += torch.stack([nll.double(), (y != -100).sum().double()])

    def on_validation_epoch_end(self) -> None:
        total = self.trainer.strategy.reduce(self._val, reduce_op="sum")
        loss = (total[0] / total[1].clamp(min=1)).float()
        if not self.trainer.sanity_checking and not torch.isfinite(loss):
            raise DataError(
                f"training diverged: the validation loss is {loss.item()} at step {self.trainer.global_step} (lower optim.lr, now {self.optim.lr:g})"
            )
        self.log("val/loss", loss, prog_bar=True)
        self.log_dict({"val/perplexity": loss.exp(), "val/bits_per_token": loss / LN2})

    def configure_optimizers(self) -> Any:  # Lightning's optimizer-and-schedule dict
        if self.optim.name == "muon" and "FSDP" in type(self.trainer.strategy).__name__:
            raise ValueError("optim.name: muon orthogonalises whole weight matrices; FSDP shards them (use DDP or adamw)")
        optimizer = make_optimizer(self.model, self.optim)
        decay_steps = self.optim.decay_steps or self.trainer.max_steps
        if decay_steps is None or decay_steps <= 0:
            raise ValueError("set trainer.max_steps (or optim.decay_steps) for the learning-rate schedule")
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, self.optim, decay_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["arseq"] = self.meta

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.meta = checkpoint.get("arseq", self.meta)


class LastCheckpoint(Checkpoint):
    """Keeps `checkpoints/last.ckpt` the newest training state, for resuming: written after every validation,
    every `every_n_steps` training steps if set (runs without validation data), and when training ends.
    (ModelCheckpoint's `save_last` does not do this since Lightning 2.6: it writes only when a top-k file is
    written at the same step, so after the best validation loss, not the last.)

    A `Checkpoint` subclass, so Lightning runs it after the ModelCheckpoint listed before it: the state it
    saves names the best checkpoint of this very validation, not the previous (already deleted) one."""

    def __init__(self, every_n_steps: int | None = None) -> None:
        self.path: Path | None = None
        self.every_n_steps = every_n_steps
        self._step = -1

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        # Where ModelCheckpoint writes by default (the first logger's run folder), agreed on by all ranks.
        run = Path(trainer.log_dir or trainer.default_root_dir)
        self.path = Path(trainer.strategy.broadcast(str(run / "checkpoints" / "last.ckpt")))
        if trainer.is_global_zero:
            clean_checkpoint_folder(self.path.parent)

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.global_step != self._step and not trainer.sanity_checking:
            bad = next((n for n, p in trainer.lightning_module.named_parameters() if not torch.isfinite(p).all()), None)
            if bad is not None:  # never replace the last good state with a diverged one
                raise DataError(
                    f"training diverged: {bad} holds NaN or infinite values at step {trainer.global_step} "
                    "(lower optim.lr; last.ckpt keeps the last finite state)"
                )
            assert self.path is not None  # set in setup()
            trainer.save_checkpoint(self.path, weights_only=False)  # full state, for resuming
            self._step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._save(trainer)

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        """Ctrl-C or SIGTERM (Lightning stops at the end of the step, raising its SystemExit): keep the steps
        trained since the last save, for --ckpt_path. Not after an error: that state may be what went wrong."""
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            self._save(trainer)
