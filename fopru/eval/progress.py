"""A progress bar that counts samples, not batches."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class SamplesProgressBar(TQDMProgressBar):
    """Lightning's bar with the evaluation's throughput in samples per second."""

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self._samples = 0
        self._started = time.perf_counter()

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._samples += len(batch["rows"])
        elapsed = time.perf_counter() - self._started
        if elapsed > 0:
            self.predict_progress_bar.set_postfix(samples=self._samples, samples_per_s=f"{self._samples / elapsed:.2f}")
