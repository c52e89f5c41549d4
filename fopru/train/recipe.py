"""The training hyperparameters of ``stage=train`` (``conf/train/<name>.yaml``)."""

from __future__ import annotations

from fopru.errors import ConfigError

AUGMENTATIONS = ("none", "dihedral", "placement")
READOUTS = ("cls", "mean")
READOUT_LAYERS = ("feature", "last")
TURN_LAYOUTS = ("isolated", "chained")


class TrainingRecipe:
    """How ``stage=train`` fits a model, in up to two phases, each AdamW with linear warm-up and cosine decay to zero.

    1. Vision (``vision_steps`` > 0): the vision tower learns, without projector and language model, to answer the
       questions about each image that are not yes/no from one vector (``vision_readout``: its [CLS] token, as a ViT
       is trained, or its mean visual feature) through a linear answer probe choosing among the answers each
       question received in training: in effect a shape and a colour classifier on easy-VQA. With ``patch_loss`` > 0
       each patch token also learns what it itself covers (see ``patch_loss``). This stands in for the pretrained
       vision encoder every LVLM starts from.
    2. Language (``max_steps``): next-token loss on the answers of several questions per image (``turns``); with
       ``freeze_vision`` the vision tower stays as phase 1 left it (as in LLaVA-1.5) and only projector and
       language model learn.

    Args:
        max_steps: optimizer steps of the language phase.
        batch_size: conversations (images) per step (per process under DDP).
        max_turns: questions about one image per conversation (an image with more has several conversations).
        turns: ``isolated``: the turns of a conversation share the image but do not see each other (an attention
            mask), each exactly one evaluation prompt; ``chained``: each turn also sees the earlier questions and
            answers (which lets a model answer ``is there a circle?`` from an earlier ``circle`` instead of the image).
        balance_yes_no: weight the loss of each yes/no answer by ``1 / (2 x its share among the answers to the same
            question in training)``, so that a question's wording alone predicts nothing and the answer must come
            from the image (easy-VQA's yes/no answers are lopsided by wording).
        learning_rate: peak learning rate.
        weight_decay: AdamW weight decay of matrices (biases, norms and embeddings have none).
        warmup_steps: linear warm-up from zero.
        answer_probe: weight of an auxiliary loss that asks a linear probe on the image's mean projected visual token
            to predict the first token of each of its answers (0: none). It gives the vision tower a direct signal
            for what the answers need (a shape, a colour) instead of only through the language model.
        vision_readout: what the vision phase's answer probe reads, at the layer the projector reads: ``cls``
            (the [CLS] token, which must gather the answer from the patches by attention) or ``mean`` (the mean patch
            token, which lets every patch token carry the whole image).
        readout_layer: where the vision phase's answer probe reads: ``feature``, the layer the projector reads
            (``vision_feature_layer``), or ``last``, the tower's last layer, as CLIP's objective sits on its last
            layer's [CLS] while LLaVA reads the one before (the patch-local objectives always sit on the features).
        patch_loss: weight of the vision phase's patch-local objectives (0: none): a linear head on each patch token
            predicts the fraction of its pixels on the shape, and a second answer probe on each patch token that is
            at least half on the shape predicts the image's answers (the object it belongs to), so that background
            tokens carry background and the shape's tokens carry the shape, as in a pretrained ViT.
        background_loss: weight of the vision phase's background objective (0: none). An adversary (a linear answer
            probe trained on the detached background patch tokens, those with no pixel on the shape) learns to read the
            image's answers off each background token; the tower learns to leave it no better than a uniform guess
            among the question's answers (cross-entropy of the adversary's prediction against the uniform
            distribution, through the adversary's weights held fixed), so that what the image shows stays on the
            tokens that show it.
        vision_steps: optimizer steps of the vision phase (0: none; the language phase trains the tower from scratch).
        vision_batch_size: conversations per vision-phase step.
        vision_learning_rate: peak learning rate of the vision phase.
        freeze_vision: keep the vision tower fixed during the language phase.
        augment: ``dihedral``: each training image is rotated by a random multiple of 90 degrees and maybe mirrored
            (for benchmarks whose answers do not depend on orientation, such as easy-VQA); ``placement``: that, and
            the shape scaled by 0.7-1.3 and moved to a random place where it stays whole (for one-object images on a
            flat background whose answers depend on neither size nor place, such as easy-VQA's); ``none``.
        gradient_clip: maximum global gradient norm (AdamW betas are 0.9 / 0.95, as for small transformers trained
            from scratch).
        val_fraction: fraction of the training images held out, with all their questions, for validation.
        val_every: steps between validations (and between resumable ``last.ckpt`` saves).
        val_samples: held-out questions scored per validation (a seeded subset, as conversations; null: all).
        output: where the trained checkpoint is saved (``save_pretrained``); null: ``checkpoint/`` in the run folder.
        resume: the folder of an interrupted training run to continue (its ``lightning/<phase>/last.ckpt``), or null.
    """

    def __init__(
        self,
        max_steps: int = 2000,
        batch_size: int = 16,
        max_turns: int = 8,
        turns: str = "chained",
        balance_yes_no: bool = False,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        answer_probe: float = 1.0,
        gradient_clip: float = 1.0,
        vision_steps: int = 0,
        vision_readout: str = "mean",
        readout_layer: str = "feature",
        patch_loss: float = 0.0,
        background_loss: float = 0.0,
        vision_batch_size: int = 64,
        vision_learning_rate: float = 2e-3,
        freeze_vision: bool = False,
        augment: str = "none",
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
            ("vision_batch_size", vision_batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"train.{name}={value!r} must be a positive integer")
        if isinstance(vision_steps, bool) or not isinstance(vision_steps, int) or vision_steps < 0:
            raise ConfigError(f"train.vision_steps={vision_steps!r} must be an integer >= 0 (0: no vision phase)")
        if not (learning_rate > 0 and vision_learning_rate > 0):
            raise ConfigError(
                f"train.learning_rate={learning_rate!r} and vision_learning_rate={vision_learning_rate!r} "
                "must be positive"
            )
        if turns not in TURN_LAYOUTS:
            raise ConfigError(f"train.turns={turns!r} is not one of {', '.join(TURN_LAYOUTS)}")
        if augment not in AUGMENTATIONS:
            raise ConfigError(f"train.augment={augment!r} is not one of {', '.join(AUGMENTATIONS)}")
        if readout_layer not in READOUT_LAYERS:
            raise ConfigError(f"train.readout_layer={readout_layer!r} is not one of {', '.join(READOUT_LAYERS)}")
        if vision_readout not in READOUTS:
            raise ConfigError(f"train.vision_readout={vision_readout!r} is not one of {', '.join(READOUTS)}")
        if not patch_loss >= 0:
            raise ConfigError(f"train.patch_loss={patch_loss!r} must be >= 0")
        if not background_loss >= 0:
            raise ConfigError(f"train.background_loss={background_loss!r} must be >= 0")
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
        self.turns = turns
        self.balance_yes_no = bool(balance_yes_no)
        self.learning_rate = float(learning_rate)
        self.weight_decay = float(weight_decay)
        self.warmup_steps = warmup_steps
        self.gradient_clip = float(gradient_clip)
        self.answer_probe = float(answer_probe)
        self.vision_steps = vision_steps
        self.vision_readout = vision_readout
        self.readout_layer = readout_layer
        self.patch_loss = float(patch_loss)
        self.background_loss = float(background_loss)
        self.vision_batch_size = vision_batch_size
        self.vision_learning_rate = float(vision_learning_rate)
        self.freeze_vision = bool(freeze_vision)
        self.augment = augment
        self.val_fraction = float(val_fraction)
        self.val_every = val_every
        self.val_samples = val_samples
        self.output = output
        self.resume = resume
