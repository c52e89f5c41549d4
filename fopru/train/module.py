"""The training step: next-token loss on the answer tokens, AdamW with warm-up and cosine decay."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch

from fopru.train.recipe import TrainingRecipe

log = logging.getLogger(__name__)


PHASES = ("vision", "language")
#: Batch entries the loss reads but the model does not take.
TARGETS_ONLY = ("answer_tokens", "answer_choices", "label_weights", "patch_coverage")
#: A patch token at least this much on the shape answers for the object (the patch answer probe's targets).
COVERED = 0.5


class TrainingModule(L.LightningModule):
    """Fits a transformers vision-language model, one phase of :class:`TrainingRecipe` at a time.

    ``language``: next-token loss on the answer tokens (plus the answer probe when ``answer_probe`` > 0); logs
    ``train/lm_loss`` every step and, per validation, ``val/loss`` and ``val/answer_accuracy``: the fraction of held-out
    answers whose every token (and the end of sequence) is the argmax under teacher forcing, which for the first turn
    is what greedy decoding returns.

    ``vision``: only the answer probe on the vision tower's features (projector and language model do not run),
    reading [CLS] or the mean patch token (``vision_readout``), plus with ``patch_loss`` > 0 the patch-local heads;
    logs ``train/probe_loss``, ``val/probe_loss`` and ``val/probe_accuracy`` (answers that are not yes/no, each
    chosen among its question's answers), and with the patch heads ``train/coverage_loss``, ``train/patch_loss``,
    ``val/coverage_accuracy`` (patches rightly called on or off the shape, at half coverage) and
    ``val/patch_accuracy`` (the image's answers read off each patch token at least half on the shape).
    """

    def __init__(self, model: Any, recipe: TrainingRecipe, phase: str = "language") -> None:
        super().__init__()
        if phase not in PHASES:
            raise ValueError(f"phase={phase!r} is not one of {', '.join(PHASES)}")
        self.model = model
        self.recipe = recipe
        self.phase = phase
        text = model.config.get_text_config()
        # Training-only: not part of the saved model.
        # The vision phase probes the vision features the projector reads (the projector learns with the language
        # model, as in LLaVA); the language phase's optional probe reads the projected tokens.
        width = model.config.vision_config.hidden_size if phase == "vision" else text.hidden_size
        wants_probe = phase == "vision" or recipe.answer_probe > 0
        self.probe = torch.nn.Linear(width, text.vocab_size) if wants_probe else None
        patch_heads = phase == "vision" and recipe.patch_loss > 0
        self.coverage_head = torch.nn.Linear(width, 1) if patch_heads else None
        self.patch_probe = torch.nn.Linear(width, text.vocab_size) if patch_heads else None
        adversary = phase == "vision" and recipe.background_loss > 0
        self.background_probe = torch.nn.Linear(width, text.vocab_size) if adversary else None
        if phase == "language" and recipe.freeze_vision:
            self.model.model.vision_tower.requires_grad_(False)

    def forward(self, batch: dict[str, torch.Tensor], **options: Any) -> Any:
        """The model on ``batch`` (less the loss-only entries), with ``options`` such as ``output_hidden_states``."""
        inputs = {key: value for key, value in batch.items() if key not in TARGETS_ONLY}
        mask = inputs["attention_mask"]
        if mask.ndim == 4:  # isolated turns: a boolean (batch, 1, query, key) mask -> additive, as every kernel takes
            dtype = self.model.dtype
            inputs["attention_mask"] = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask.bool(), torch.finfo(dtype).min
            )
        return self.model(**inputs, **options)

    def probe_logits(self, features: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The answer probe: logits over the vocabulary from each image's mean visual token, once per question, with
        the tokens that are not among the question's answer choices masked out."""
        assert self.probe is not None
        choices = batch["answer_choices"]
        pooled = features.reshape(choices.shape[0], -1, self.probe.in_features).mean(dim=1)
        logits = self.probe(pooled)[:, None].expand(-1, choices.shape[1], -1)
        return logits.masked_fill(~choices, torch.finfo(logits.dtype).min)

    def probe_loss(self, features: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the answer probe against the first token of each of the image's answers that are not yes
        or no, among the question's choices: in effect one classifier per question (shape, colour)."""
        return self.answer_loss(self.probe_logits(features, batch), batch["answer_tokens"])

    @staticmethod
    def answer_loss(logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of probe ``logits`` (images, turns, vocabulary) against ``answers`` (-100: none)."""
        if not (answers != -100).any():
            return logits.clamp_min(0).sum() * 0.0  # keeps the graph (DDP) when no answer is open
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), answers.flatten(), ignore_index=-100
        )

    def image_features(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the vision features the projector reads, ``vision_feature_layer``; those the answer probe reads,
        ``readout_layer``), [CLS] included as the tower outputs it, without running the projector or the language
        model."""
        output = self.model.model.vision_tower(batch["pixel_values"], output_hidden_states=True)
        features: torch.Tensor = output.hidden_states[self.model.config.vision_feature_layer]
        readout: torch.Tensor = output.hidden_states[-1] if self.recipe.readout_layer == "last" else features
        return features, readout

    def vision_logits(
        self, features: torch.Tensor, batch: dict[str, torch.Tensor], readout: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The vision phase's predictions from ``features`` (images, 1 + patches, width): ``probe`` (images, turns,
        vocabulary) from [CLS] or the mean patch token of ``readout`` (the same shape; None: ``features``), and
        with the patch heads ``coverage`` (images, patches) and
        ``patch`` (open turns, patches, vocabulary), for each turn with an answer the probe can predict (yes/no
        turns have none); answers outside each question's choices are masked out."""
        assert self.probe is not None
        choices = batch["answer_choices"]
        patches = features[:, 1:]
        read = features if readout is None else readout
        pooled = read[:, 0] if self.recipe.vision_readout == "cls" else read[:, 1:].mean(dim=1)
        lowest = torch.finfo(features.dtype).min
        logits = {"probe": self.probe(pooled)[:, None].expand(-1, choices.shape[1], -1).masked_fill(~choices, lowest)}
        if self.coverage_head is not None and self.patch_probe is not None:
            logits["coverage"] = self.coverage_head(patches).squeeze(-1)
            open_turns = batch["answer_tokens"] != -100
            per_patch = self.patch_probe(patches)[open_turns.nonzero()[:, 0]]
            logits["patch"] = per_patch.masked_fill(~choices[open_turns][:, None], lowest)
        if self.background_probe is not None:
            open_turns = batch["answer_tokens"] != -100
            rows = open_turns.nonzero()[:, 0]
            allowed = ~choices[open_turns][:, None]
            probe = self.background_probe
            # The adversary learns on detached tokens; the tower is scored through the adversary's weights held
            # fixed, so that each side's loss moves only its own parameters.
            trained = probe(patches.detach())[rows]
            fixed = torch.nn.functional.linear(patches, probe.weight.detach(), probe.bias.detach())[rows]
            logits["adversary"] = trained.masked_fill(allowed, lowest)
            logits["background"] = fixed.masked_fill(allowed, lowest)
        return logits

    @staticmethod
    def patch_answers(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(open turns, patches) the patch probe's targets: each open turn's answer on its image's patches at least
        :data:`COVERED` on the shape, -100 elsewhere."""
        return TrainingModule.answers_on(batch, batch["patch_coverage"] >= COVERED)

    @staticmethod
    def background_answers(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(open turns, patches) the adversary's targets: each open turn's answer on its image's patches with no
        pixel on the shape, -100 elsewhere."""
        return TrainingModule.answers_on(batch, batch["patch_coverage"] == 0)

    @staticmethod
    def answers_on(batch: dict[str, torch.Tensor], chosen: torch.Tensor) -> torch.Tensor:
        """(open turns, patches) each open turn's answer on the patches of its image that ``chosen`` (images,
        patches; bool) marks, -100 elsewhere."""
        open_turns = batch["answer_tokens"] != -100
        marked = chosen[open_turns.nonzero()[:, 0]]
        answers = batch["answer_tokens"][open_turns][:, None].expand(-1, marked.shape[1])
        return answers.masked_fill(~marked, -100)

    @staticmethod
    def uniform_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``logits`` (turns, patches, vocabulary; disallowed answers at the dtype's lowest) against
        the uniform distribution over each turn's allowed answers, on the positions where ``targets`` is not -100:
        its minimum, log(number of answers), is reached when the logits tell the answers apart not at all."""
        scored = targets != -100
        if not bool(scored.any()):
            return logits.clamp_min(0).sum() * 0.0
        chosen = logits[scored]
        allowed = chosen > torch.finfo(chosen.dtype).min
        log_probs = torch.log_softmax(chosen, dim=-1)
        return -(log_probs * allowed).sum(dim=-1).div(allowed.sum(dim=-1)).mean()

    def vision_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``probe`` (cross-entropy of the image's answers), and with the patch heads ``coverage`` (binary
        cross-entropy against each patch's shape fraction) and ``patch`` (cross-entropy of the image's answers on
        each covered patch)."""
        return self.vision_losses_from(*self.image_features(batch), batch=batch)

    def vision_losses_from(
        self, features: torch.Tensor, readout: torch.Tensor | None = None, *, batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """:meth:`vision_losses` of given ``features`` and ``readout`` (images, 1 + patches, width; see
        :meth:`vision_logits`)."""
        logits = self.vision_logits(features, batch, readout)
        losses = {"probe": self.answer_loss(logits["probe"], batch["answer_tokens"])}
        if "patch" in logits:
            losses["coverage"] = torch.nn.functional.binary_cross_entropy_with_logits(
                logits["coverage"], batch["patch_coverage"].to(logits["coverage"].dtype)
            )
            losses["patch"] = self.answer_loss(logits["patch"], self.patch_answers(batch))
        if "background" in logits:
            targets = self.background_answers(batch)
            losses["adversary"] = self.answer_loss(logits["adversary"], targets)
            losses["background"] = self.uniform_loss(logits["background"], targets)
        return losses

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        size = batch["answer_tokens"].shape[0]
        if self.phase == "vision":
            losses = self.vision_losses(batch)
            for name, value in losses.items():
                self.log(f"train/{name}_loss", value, prog_bar=name == "probe", batch_size=size)
            patch_terms = [value for name, value in losses.items() if name in ("coverage", "patch")]
            total = losses["probe"] + self.recipe.patch_loss * sum(patch_terms, torch.zeros(()))
            if "background" in losses:
                total = total + losses["adversary"] + self.recipe.background_loss * losses["background"]
            return total
        output = self(batch)
        loss = output.loss if "label_weights" not in batch else weighted_loss(output.logits, batch)
        self.log("train/lm_loss", loss, prog_bar=True, batch_size=size)
        if self.probe is not None:
            probe_loss = self.probe_loss(output.image_hidden_states, batch)
            self.log("train/probe_loss", probe_loss, batch_size=size)
            loss = loss + self.recipe.answer_probe * probe_loss
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self.phase == "vision":
            self.vision_validation(batch)
            return
        output = self(batch)
        hits, count = answer_hits(output.logits, batch["labels"])
        self.log("val/loss", output.loss, prog_bar=True, batch_size=count, sync_dist=True)
        self.log("val/answer_accuracy", hits / count, prog_bar=True, batch_size=count, sync_dist=True)

    def vision_validation(self, batch: dict[str, torch.Tensor]) -> None:
        """Logs the vision phase's validation metrics (see the class docstring)."""
        features, readout = self.image_features(batch)
        logits = self.vision_logits(features, batch, readout)
        answers = batch["answer_tokens"]
        labelled = answers != -100
        count = int(labelled.sum())
        if count == 0:
            return
        correct = ((logits["probe"].argmax(dim=-1) == answers) & labelled).sum().float()
        loss = self.answer_loss(logits["probe"], answers)
        self.log("val/probe_loss", loss, prog_bar=True, batch_size=count, sync_dist=True)
        self.log("val/probe_accuracy", correct / count, prog_bar=True, batch_size=count, sync_dist=True)
        if "background" in logits:
            targets = self.background_answers(batch)
            scored = targets != -100
            if bool(scored.any()):
                hits = ((logits["adversary"].argmax(dim=-1) == targets) & scored).sum().float()
                self.log("val/background_accuracy", hits / scored.sum(), batch_size=int(scored.sum()), sync_dist=True)
        if "patch" not in logits:
            return
        coverage = batch["patch_coverage"]
        called = (logits["coverage"] > 0) == (coverage >= COVERED)
        self.log("val/coverage_accuracy", called.float().mean(), batch_size=coverage.numel(), sync_dist=True)
        targets = self.patch_answers(batch)
        scored = targets != -100
        if bool(scored.any()):
            hits = ((logits["patch"].argmax(dim=-1) == targets) & scored).sum().float()
            scored_count = int(scored.sum())
            self.log("val/patch_accuracy", hits / scored_count, batch_size=scored_count, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        metrics = {key: float(value) for key, value in self.trainer.callback_metrics.items() if key.startswith("val/")}
        if self.global_rank == 0 and metrics:
            log.info("step %d: %s", self.global_step, ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))

    def configure_optimizers(self) -> Any:
        recipe = self.recipe
        if self.phase == "vision":
            named = [
                (name, parameter)
                for name, parameter in self.named_parameters()
                if name.startswith(
                    (
                        "model.model.vision_tower",
                        "probe",
                        "coverage_head",
                        "patch_probe",
                        "background_probe",
                    )
                )
            ]
            learning_rate, steps = recipe.vision_learning_rate, recipe.vision_steps
        else:
            named = list(self.named_parameters())
            learning_rate, steps = recipe.learning_rate, recipe.max_steps
        named = [(name, parameter) for name, parameter in named if parameter.requires_grad]
        decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
        no_decay = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=learning_rate,
            betas=(0.9, 0.95),
        )
        warmup = min(recipe.warmup_steps, steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def weighted_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy of the labelled positions, each weighted by ``label_weights`` (weighted mean);
    ``logits[:, t]`` predicts ``labels[:, t + 1]``."""
    labels, weights = batch["labels"][:, 1:], batch["label_weights"][:, 1:].to(logits.dtype)
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels.flatten(), ignore_index=-100, reduction="none"
    )
    weights = weights.flatten() * (labels.flatten() != -100)
    return (losses * weights).sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)


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
