"""The training step: next-token loss on the answer tokens, AdamW with warm-up and cosine decay."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch

from fopru.train.recipe import TrainingRecipe

log = logging.getLogger(__name__)


class TrainingModule(L.LightningModule):
    """Fits a transformers vision-language model on answer tokens.

    Logs ``train/loss`` every step and, per validation, ``val/loss`` and ``val/answer_accuracy``: the fraction of
    held-out answers whose every token (and the end of sequence) is the argmax under teacher forcing, which for the
    first turn is what greedy decoding returns.
    """

    def __init__(self, model: Any, recipe: TrainingRecipe) -> None:
        super().__init__()
        self.model = model
        self.recipe = recipe
        text = model.config.get_text_config()
        # Training-only: not part of the saved model.
        self.probe = torch.nn.Linear(text.hidden_size, text.vocab_size) if recipe.answer_probe > 0 else None

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.model(**{key: value for key, value in batch.items() if key != "answer_tokens"})

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        output = self(batch)
        loss: torch.Tensor = output.loss
        size = batch["labels"].shape[0]
        self.log("train/lm_loss", loss, prog_bar=True, batch_size=size)
        if self.probe is not None:
            pooled = output.image_hidden_states.reshape(size, -1, self.probe.in_features).mean(dim=1)
            logits = self.probe(pooled)[:, None].expand(-1, batch["answer_tokens"].shape[1], -1)
            probe_loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch["answer_tokens"].flatten(), ignore_index=-100
            )
            self.log("train/probe_loss", probe_loss, batch_size=size)
            loss = loss + self.recipe.answer_probe * probe_loss
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        output = self(batch)
        correct, answers = answer_hits(output.logits, batch["labels"])
        self.log("val/loss", output.loss, prog_bar=True, batch_size=answers, sync_dist=True)
        self.log("val/answer_accuracy", correct / answers, prog_bar=True, batch_size=answers, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        metrics = {key: float(value) for key, value in self.trainer.callback_metrics.items() if key.startswith("val/")}
        if self.global_rank == 0 and metrics:
            log.info("step %d: %s", self.global_step, ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))

    def configure_optimizers(self) -> Any:
        recipe = self.recipe
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2 and "embed" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=recipe.learning_rate,
            betas=(0.9, 0.95),
        )

        def factor(step: int) -> float:
            if step < recipe.warmup_steps:
                return (step + 1) / recipe.warmup_steps
            progress = (step - recipe.warmup_steps) / max(1, recipe.max_steps - recipe.warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def answer_hits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(answers whose every token is the teacher-forced argmax, number of answers). An answer is a maximal run of
    labelled positions (labels other than -100); ``logits[:, t]`` predicts ``labels[:, t + 1]``."""
    predicted = logits[:, :-1].argmax(dim=-1)
    targets = labels[:, 1:]
    labelled = targets != -100
    starts = labelled & ~torch.nn.functional.pad(labelled, (1, 0))[:, :-1]
    run = torch.cumsum(starts.flatten(), dim=0) - 1  # answer index of each position, row-major
    answers = int(starts.sum())
    wrong = torch.zeros(answers, dtype=torch.bool, device=logits.device)
    miss = (predicted != targets) & labelled
    wrong.scatter_reduce_(0, run[labelled.flatten()], miss.flatten()[labelled.flatten()], reduce="amax")
    return (~wrong).sum().float(), answers
