"""The training hyperparameters of ``stage=train`` (``conf/train/<name>.yaml``)."""

from __future__ import annotations

from fopru.errors import ConfigError


class TrainingRecipe:
    """How ``stage=train`` fits a model: AdamW with linear warm-up and cosine decay to zero, for ``max_steps``.

    Args:
        max_steps: optimizer steps.
        batch_size: conversations (images) per step (per process under DDP).
        max_turns: questions about one image per conversation (an image with more has several conversations).
        learning_rate: peak learning rate.
        weight_decay: AdamW weight decay of matrices (biases, norms and embeddings have none).
        warmup_steps: linear warm-up from zero.
        answer_probe: weight of an auxiliary loss that asks a linear probe on the image's mean projected visual token
            to predict the first token of each of its answers (0: none). It gives the vision tower a direct signal
            for what the answers need (a shape, a colour) instead of only through the language model.
        gradient_clip: maximum global gradient norm (AdamW betas are 0.9 / 0.95, as for small transformers trained
            from scratch).
        val_fraction: fraction of the training images held out, with all their questions, for validation.
        val_every: steps between validations (and between resumable ``last.ckpt`` saves).
        val_samples: held-out questions scored per validation (a seeded subset, as conversations; null: all).
        output: where the trained checkpoint is saved (``save_pretrained``); null: ``checkpoint/`` in the run folder.
        resume: a ``last.ckpt`` of an interrupted run to continue from, or null.
    """

    def __init__(
        self,
        max_steps: int = 2000,
        batch_size: int = 16,
        max_turns: int = 8,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        answer_probe: float = 1.0,
        gradient_clip: float = 1.0,
        val_fraction: float = 0.05,
        val_every: int = 250,
        val_samples: int | None = 1000,
        output: str | None = None,
        resume: str | None = None,
    ) -> None:
        for name, value in (
            ("max_steps", max_steps),
            ("batch_size", batch_size),
            ("max_turns", max_turns),
            ("val_every", val_every),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"train.{name}={value!r} must be a positive integer")
        if not learning_rate > 0:
            raise ConfigError(f"train.learning_rate={learning_rate!r} must be positive")
        if answer_probe < 0:
            raise ConfigError(f"train.answer_probe={answer_probe!r} must be >= 0")
        if not gradient_clip > 0:
            raise ConfigError(f"train.gradient_clip={gradient_clip!r} must be positive")
        if weight_decay < 0 or warmup_steps < 0:
            raise ConfigError(f"train.weight_decay={weight_decay!r} and warmup_steps={warmup_steps!r} must be >= 0")
        if not 0 < val_fraction < 1:
            raise ConfigError(f"train.val_fraction={val_fraction!r} must be in (0, 1)")
        if val_samples is not None and (isinstance(val_samples, bool) or val_samples < 1):
            raise ConfigError(f"train.val_samples={val_samples!r} must be a positive integer or null (all)")
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.max_turns = max_turns
        self.learning_rate = float(learning_rate)
        self.weight_decay = float(weight_decay)
        self.warmup_steps = warmup_steps
        self.gradient_clip = float(gradient_clip)
        self.answer_probe = float(answer_probe)
        self.val_fraction = float(val_fraction)
        self.val_every = val_every
        self.val_samples = val_samples
        self.output = output
        self.resume = resume
