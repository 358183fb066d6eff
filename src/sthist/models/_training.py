"""The Lightning training module: losses, optimiser and schedule around the plain torch modules."""

from __future__ import annotations

import lightning as L
import torch

from sthist.models._modules import ExpressionModel


class TrainingModule(L.LightningModule):
    """Trains an :class:`ExpressionModel` on cached tokens (fast path) or on images through the encoder.

    AdamW with a cosine schedule from ``learning_rate`` to ``min_learning_rate`` over ``max_epochs``.
    """

    def __init__(
        self,
        model: ExpressionModel,
        encoder: torch.nn.Module | None = None,
        *,
        learning_rate: float = 1e-4,
        weight_decay: float = 1e-3,
        min_learning_rate: float = 1e-5,
        max_epochs: int = 60,
    ):
        super().__init__()
        self.model = model
        self.encoder = encoder
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.min_learning_rate = min_learning_rate
        self.max_epochs = max_epochs
        self.history: list[dict[str, float]] = []
        self._epoch_sums: dict[str, float] = {}
        self._epoch_batches = 0

    def training_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        tokens = batch["tokens"] if self.encoder is None else self.encoder(batch["image"])
        losses = self.model.losses(tokens, batch["expression"])
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
            self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(self.max_epochs, 1), eta_min=self.min_learning_rate
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sthist_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("sthist_history", []))
