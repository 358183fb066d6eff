"""The Lightning training module: losses, optimiser and schedule around the plain torch modules."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch

from sthist._constants import Key
from sthist._core._config import TrainingConfig
from sthist._settings import retained_memory, settings


class TrainingModule(L.LightningModule):
    """Trains a module with ``losses(tokens, expression)`` on cached tokens (fast path) or on images through the encoder.

    AdamW with a cosine schedule from ``learning_rate`` to ``min_learning_rate`` over ``max_epochs``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        encoder: torch.nn.Module | None = None,
        *,
        training: TrainingConfig,
    ):
        super().__init__()
        self.model = model
        self.encoder = encoder
        self.training_config = training
        self.history: list[dict[str, float]] = []
        self._epoch_sums: dict[str, float] = {}
        self._epoch_batches = 0

    def training_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        tokens = batch["tokens"] if self.encoder is None else self.encoder(batch["image"])
        losses = self.model.losses(tokens, batch["expression"])  # type: ignore[operator]
        self.log("loss", losses["loss"], prog_bar=True, on_step=True, on_epoch=False, batch_size=len(tokens))
        for name, value in losses.items():
            self._epoch_sums[name] = self._epoch_sums.get(name, 0.0) + float(value.detach())
        self._epoch_batches += 1
        return losses["loss"]

    def on_train_epoch_end(self) -> None:
        if self._epoch_batches:
            record = {name: total / self._epoch_batches for name, total in self._epoch_sums.items()}
            record["epoch"] = int(self.current_epoch)
            self.history.append(record)
        self._epoch_sums, self._epoch_batches = {}, 0

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.parameters(),
            lr=self.training_config.learning_rate,
            weight_decay=self.training_config.weight_decay,
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer,
            T_max=max(self.training_config.max_epochs, 1),
            eta_min=self.training_config.min_learning_rate,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[Key.checkpoint.HISTORY] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get(Key.checkpoint.HISTORY, []))


def fit_module(
    module: torch.nn.Module,
    encoder: torch.nn.Module | None,
    train_data: Any,
    training: TrainingConfig,
    *,
    random_state: int,
    gpu: bool,
    accelerator: str,
    devices,
    strategy: str,
    num_nodes: int,
    precision: str | None,
    checkpoint_dir: str | None,
    resume_from: str | None,
) -> list[dict[str, float]]:
    """Run the Lightning trainer over ``train_data`` (a map-style dataset); returns the per-epoch mean losses.

    With ``encoder`` the encoder is trained too (end to end, mixed precision on GPU); otherwise items are
    cached tokens.
    """
    plan = TrainingModule(module, encoder, training=training)
    generator = torch.Generator().manual_seed(random_state)
    loader = torch.utils.data.DataLoader(
        train_data,
        batch_size=training.batch_size,
        shuffle=True,
        drop_last=len(train_data) >= 2 * training.batch_size,
        generator=generator,
        num_workers=settings.num_workers,
        # Batches bound for a GPU come from pinned memory (asynchronous copies); loader workers live for the
        # whole fit instead of starting again every epoch.
        pin_memory=gpu,
        persistent_workers=settings.num_workers > 0,
    )
    callbacks: list[L.Callback] = []
    if checkpoint_dir is not None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        callbacks.append(
            ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=1, every_n_epochs=1)
        )
    # Fine-tuning runs the encoder at every step: the allocator keeps what it frees, as in encoding.
    allocator = retained_memory() if encoder is not None else contextlib.nullcontext()
    # Lightning needs a root folder even when it writes nothing there: a temporary one, removed afterwards.
    root = (
        contextlib.nullcontext(checkpoint_dir)
        if checkpoint_dir
        else tempfile.TemporaryDirectory(prefix="sthist-fit-")
    )
    with _quiet_lightning(), allocator, root as root_dir:
        trainer = L.Trainer(
            max_epochs=training.max_epochs,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            num_nodes=num_nodes,
            precision=precision or ("bf16-mixed" if gpu and encoder is not None else "32-true"),  # type: ignore[arg-type]
            default_root_dir=root_dir,
            callbacks=callbacks,
            enable_checkpointing=checkpoint_dir is not None,
            logger=False,
            enable_progress_bar=settings.progress,
            enable_model_summary=False,
            deterministic=not gpu,
            log_every_n_steps=max(1, min(50, len(loader))),
        )
        trainer.fit(plan, loader, ckpt_path=resume_from)
    return plan.history


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Keep Lightning's start-up notices (device summary, "💡 Tip" lines, 'stopped' message) out of the log.

    They come at INFO level and say nothing about the fit; sthist logs its own progress (``-v``).
    """
    names = ("lightning.pytorch", "lightning.fabric")
    previous = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
            warnings.filterwarnings("ignore", message=".*does not have many workers")
            yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)
