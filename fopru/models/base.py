"""The target-model contract: one adapter per LVLM family, and the skeleton all of them share.

An adapter wraps a real transformers model and its processor. It encodes images (tapping the vision layer the
pipeline's request names), hands visual features to the pruning pipeline, and rebuilds the language model's input
from the kept tokens. The skeleton of that, the greedy decode loop with a KV cache that holds only text and kept
visual tokens, and the loading are here; the data carriers are in :mod:`fopru.models.inputs`, the sequence assembly
in :mod:`fopru.models.sequence`, the pruning glue in :mod:`fopru.models.pruning`.
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import DynamicCache

from fopru.efficiency.flops import FlopsBreakdown, with_layer_tokens
from fopru.errors import ConfigError
from fopru.llm_pruning.base import trailing_text
from fopru.models.inputs import SAMPLE_KEYS, Generation, KeptImage, LanguageInputs, SampleCost, VisualGroup
from fopru.models.loading import checkpoint_fingerprint, resolve_checkpoint, torch_dtype
from fopru.models.pruning import prune_images, tap_flops
from fopru.models.sequence import assemble_sequences, prompt_text
from fopru.models.shared_prefix import split_shared_prefix
from fopru.models.staged import Segment, StagedDecoder
from fopru.models.tap import VisionAttentionTap
from fopru.models.vision_cache import VisionCache, join_images, split_images
from fopru.reorder.base import Positions
from fopru.significance.base import SignificanceSource
from fopru.timing import PhaseTimer

if TYPE_CHECKING:
    from fopru.pipeline import PruningPipeline, PruningRequest


log = logging.getLogger(__name__)
#: Entries of a prepared batch that belong to the text side (never read by the vision encoder).
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", SAMPLE_KEYS)

#: Attention kernels transformers can run besides its registered ones.
BUILTIN_ATTENTION = ("eager",)


def check_attn_implementation(name: str) -> str:
    """``name`` when transformers knows the attention kernel, else a :class:`ConfigError` listing the known ones."""
    from transformers import AttentionInterface

    known = sorted({*BUILTIN_ATTENTION, *AttentionInterface._global_mapping})
    if not isinstance(name, str) or name not in known:
        raise ConfigError(f"model.attn_implementation={name!r} is not one of {known}")
    return name


def check_device(device: str) -> str:
    """``device`` when this machine has it (``cpu``, ``cuda``, ``cuda:<index>``, ``mps``), else a
    :class:`ConfigError`."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"model.device={device!r} is not a device: use cpu, cuda or cuda:<index> ({error})") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"model.device={device!r} but this machine has no CUDA device (torch {torch.__version__}); "
                "use model.device=cpu (with trainer=cpu)"
            )
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(
                f"model.device={device!r} but this machine has {count} CUDA devices (cuda:0..{count - 1})"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"model.device={device!r} but MPS is not available here; use model.device=cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"model.device={device!r} is not supported: use cpu, cuda, cuda:<index> or mps")
    return device


def check_feature_selection(config: Any, select: str, who: str, note: str = "") -> None:
    """Refuse a checkpoint whose vision feature selection an adapter does not handle: a
    ``vision_feature_select_strategy`` other than ``select``, or several feature layers. ``note`` says why
    ``select`` (e.g. that the tower has no [CLS])."""
    if config.vision_feature_select_strategy != select or not isinstance(config.vision_feature_layer, int):
        raise ConfigError(
            f"{who} supports vision_feature_select_strategy={select!r}{note} with one vision_feature_layer, got "
            f"{config.vision_feature_select_strategy!r} / {config.vision_feature_layer!r}"
        )


class TargetModel(ABC):
    """An adapter for one LVLM family.

    Constructor arguments are config-time values; :meth:`load` builds the model and processor. The skeleton is
    shared: :meth:`prefill_inputs` (encode, prune, assemble), :meth:`flops` (the family's costs plus the tap's and
    the strategy's), the tap, the greedy decode loop and the loading. A family names the transformers classes
    (``model_class``, ``processor_class``) and implements what is its own:

    - :meth:`vision_layers`: the vision encoder's transformer layers, in order;
    - :meth:`attention_of`: the attention module of one of them (where the tap hooks in);
    - :meth:`default_tap_layer`: the layer significance comes from by default;
    - :meth:`visual_groups`: the batch's images encoded into :class:`VisualGroup` s (features, tapped attention,
      layout with its grids and [CLS], projector, placeholder count);

    and may override :meth:`base_positions` (1-D positions over real tokens by default; Qwen's M-RoPE index),
    :meth:`sample_costs` (its FLOPs accounting), :meth:`resolve_positions` and :meth:`load_processor`.

    Args:
        checkpoint: a hub id (``llava-hf/llava-1.5-7b-hf``), a local folder, or ``tiny:<name>`` for the seeded
            random test fixtures.
        dtype: ``float32``, ``float16`` or ``bfloat16``.
        attn_implementation: the kernel of every layer (``sdpa``, ``eager``, ``flash_attention_2``); the tap keeps it.
        device: where to load the model.
        tap_layer: the vision layer significance comes from (0-based, negative from the end); ``None`` for the
            family's default. A significance source's own ``layer`` wins over it.
    """

    model_class: Any
    processor_class: Any
    #: The user turn when the processor has no chat template; ``{text}`` is the benchmark's prompt.
    prompt_template: str = "USER: <image>\n{text} ASSISTANT:"
    #: A later user turn of the same conversation (training conversations), appended after ``</s>``.
    follow_up_template: str = "USER: {text} ASSISTANT:"
    #: Position modes this family supports (Qwen's M-RoPE only supports ``original``).
    position_modes: tuple[str, ...] = ("compact", "original")
    #: The entries of a prepared batch that :meth:`visual_groups` reads (the first has one row per image): the
    #: vision cache keys each image by its part of them (:meth:`image_inputs`) and encodes sub-batches of them.
    vision_inputs: tuple[str, ...] = ("pixel_values",)
    #: Whether the vision cache can hold this family's images: False where a batch cannot be split into images by
    #: :meth:`image_inputs` alone (the family then encodes every batch itself, exactly as without a cache).
    caches_vision: bool = True
    #: Whether :meth:`visual_groups` puts consecutive images of one layout into one group (LLaVA-1.5) rather than
    #: one group per image: cached images are handed over the same way.
    groups_images: bool = False
    #: Whether the prefill can be split into a prefix shared by the rows of one image and each row's remainder
    #: (:meth:`shared_prefill`): False where visual features enter the language model deeper than its input
    #: embeddings (Qwen3-VL's DeepStack), which the stock forward of the remainder would not see.
    splits_prefill: bool = True

    def __init__(
        self,
        checkpoint: str,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        device: str = "cpu",
        tap_layer: int | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        if tap_layer is not None and (isinstance(tap_layer, bool) or not isinstance(tap_layer, int)):
            raise ConfigError(f"model.tap_layer={tap_layer!r} must be a layer index (an integer) or null")
        self.tap_layer = tap_layer
        self.dtype = torch_dtype(dtype)
        self.attn_implementation = check_attn_implementation(attn_implementation)
        self.device = device  # checked against this machine's devices before loading (check_device)
        self._model: Any = None
        self._config: Any = None
        self._processor: Any = None
        #: When set, stages are timed into it: vision, pruning, prefill, decode (see :mod:`fopru.timing`).
        self.timer: PhaseTimer | None = None
        #: When set and enabled, each distinct image is encoded once and reused (:meth:`encoded_groups`).
        self.vision_cache: VisionCache | None = None
        #: Prefill the prompt prefix of an image once for all its rows of a batch (:meth:`shared_prefill`); the
        #: run-level ``shared_prefix`` key sets it.
        self.shared_prefix = True
        self._cache_contexts: dict[tuple[int | None, str, bool, bool], str] = {}

    def phase(self, name: str) -> AbstractContextManager[None]:
        """Time a stage when a timer is attached."""
        return self.timer.phase(name) if self.timer is not None else nullcontext()

    # -- loading -------------------------------------------------------------------------------------------
    def build_untrained(self, folder: Path, seed: int) -> None:
        """Save the family's untrained architecture and processor into ``folder``, for ``stage=train``."""
        raise ConfigError(
            f"{type(self).__name__} ({self.checkpoint}) cannot be trained from scratch: stage=train needs a model "
            "whose untrained architecture the framework builds, such as model=mini_llava"
        )

    def load(self) -> TargetModel:
        """Load model and processor (once)."""
        if self._model is None:
            path = resolve_checkpoint(self.checkpoint)
            self._model = self.model_class.from_pretrained(
                path, dtype=self.dtype, attn_implementation=self.attn_implementation
            ).to(self.device)
            self._model.eval()
            self._processor = self.load_processor(path)
        return self

    def fingerprint(self) -> str:
        """What identifies this checkpoint's weights and processor files (:func:`checkpoint_fingerprint`): a content
        digest for a folder (cached, so a large checkpoint is hashed once), the commit for a hub checkpoint."""
        return checkpoint_fingerprint(resolve_checkpoint(self.checkpoint))

    def config(self) -> Any:
        """The checkpoint's transformers config (``config.json`` only, no weights), for checks before loading."""
        if self._model is not None:
            return self._model.config
        if self._config is None:
            from transformers import AutoConfig

            path = resolve_checkpoint(self.checkpoint)
            try:
                self._config = AutoConfig.from_pretrained(path)
            except (OSError, ValueError) as error:
                raise ConfigError(f"checkpoint {self.checkpoint!r}: its config.json cannot be read ({error})") from None
        return self._config

    def vision_depth(self) -> int:
        """The vision encoder's layer count, read from the checkpoint's config."""
        vision = self.config().vision_config
        return int(getattr(vision, "num_hidden_layers", None) or vision.depth)

    def visual_tokens_per_image(self) -> int | None:
        """The visual tokens of every image, from the config, when the family has a fixed count (``None``: it
        depends on the image, as with any-resolution tiling)."""
        return None

    def check_against_config(self, pipeline: PruningPipeline) -> None:
        """Refuse, from the checkpoint's config alone, what only the model's shape rules out: a tapped layer
        outside the vision encoder, a ``keep_tokens`` above the visual tokens of an image."""
        depth = self.vision_depth()
        layers = {"significance.layer": pipeline.request.layer, "model.tap_layer": self.tap_layer}
        for key, layer in layers.items():
            if layer is not None and not -depth <= layer < depth:
                raise ConfigError(
                    f"{key}={layer} is outside the vision encoder of {self.checkpoint!r}, which has {depth} layers: "
                    f"choose {-depth} <= {key} <= {depth - 1} (negative counts from the end)"
                )
        tokens = self.visual_tokens_per_image()
        keep_tokens = pipeline.budget.keep_tokens
        if tokens is not None and keep_tokens is not None and keep_tokens > tokens:
            raise ConfigError(
                f"keep_tokens={keep_tokens} is more than the {tokens} visual tokens per image of "
                f"{self.checkpoint!r}: choose 1 <= keep_tokens <= {tokens}, or a fraction with keep=<(0, 1]>"
            )

    def load_processor(self, path: str) -> Any:
        """The processor saved with the checkpoint; families override this for processor workarounds."""
        return self.processor_class.from_pretrained(path)

    @property
    def model(self) -> Any:
        """The transformers model (loads on first use)."""
        return self.load()._model

    @property
    def processor(self) -> Any:
        """The transformers processor (loads on first use)."""
        return self.load()._processor

    # -- family-specific -----------------------------------------------------------------------------------
    @abstractmethod
    def vision_layers(self) -> nn.ModuleList:
        """The vision encoder's transformer layers, in order."""

    @abstractmethod
    def attention_of(self, layer: nn.Module) -> nn.Module:
        """The attention module of one vision layer."""

    @abstractmethod
    def default_tap_layer(self) -> int:
        """Index (0-based) of the vision layer whose attention significance comes from by default."""

    @abstractmethod
    def visual_groups(self, batch: Mapping[str, torch.Tensor], request: PruningRequest) -> list[VisualGroup]:
        """The batch's images, encoded (tapping what ``request`` asks for), as groups of same-layout images in the
        order images appear across the batch."""

    def base_positions(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(P, B, L) position ids of the processor's unpruned prompt: 0.. over each sample's real tokens (1-D RoPE);
        families with their own position index (M-RoPE) override it."""
        attention_mask = batch["attention_mask"]
        return (attention_mask.cumsum(dim=-1) - 1).clamp_min(0)[None]

    # -- the vision cache ------------------------------------------------------------------------------------
    def image_count(self, batch: Mapping[str, torch.Tensor]) -> int:
        """The images of a prepared batch: the rows of its first :attr:`vision_inputs` entry."""
        return int(batch[self.vision_inputs[0]].shape[0])

    def image_inputs(self, batch: Mapping[str, torch.Tensor], image: int) -> dict[str, torch.Tensor]:
        """Image ``image``'s part of the batch's :attr:`vision_inputs` (row ``image`` of each); a family whose
        inputs are laid out otherwise (flattened patches, padded crops) overrides it. Concatenating the parts of
        several images along dimension 0 must give a batch of those images that :meth:`visual_groups` reads."""
        return {name: batch[name][image : image + 1] for name in self.vision_inputs}

    def cache_context(self, request: PruningRequest) -> str:
        """The digest of what an encoded image depends on besides itself (see :mod:`fopru.models.vision_cache`):
        checkpoint, family, numerics, image processor, the tap and how much of the tower runs."""
        tap = None if request.reduction is None else (self.tap_index(request), repr(request.reduction))
        # What else the family's visual_groups read from the request: [CLS] features handed over, per-crop layouts.
        shape = {"cls": request.cls, "per_crop": request.per_crop is not None}
        memo = (tap[0] if tap else None, tap[1] if tap else "", request.cls, request.per_crop is not None)
        if memo not in self._cache_contexts:
            from importlib.metadata import version

            image_processor = getattr(self.processor, "image_processor", self.processor)
            to_dict = getattr(image_processor, "to_dict", None)
            self._cache_contexts[memo] = VisionCache.context_digest(
                {
                    "family": f"{type(self).__module__}.{type(self).__qualname__}",
                    "weights": self.fingerprint(),
                    "processor": to_dict() if callable(to_dict) else repr(image_processor),
                    "dtype": str(self.dtype),
                    "attention": self.attn_implementation,
                    "device": torch.device(self.device).type,
                    "tap": tap,
                    "groups": shape,
                    "versions": [version("torch"), version("transformers")],
                }
            )
        return self._cache_contexts[memo]

    def cacheable(self, batch: Mapping[str, torch.Tensor]) -> bool:
        """Whether the batch's vision side can come from the cache: every non-text entry is one of the family's
        declared :attr:`vision_inputs` (an undeclared one might feed the encoder, and would be missing from the
        key and from the sub-batches)."""
        if not self.caches_vision:
            return False
        undeclared = set(batch) - set(self.vision_inputs) - set(TEXT_INPUTS)
        if undeclared and not self._warned_uncacheable:
            log.warning(
                "%s: batch entries %s are not among its vision_inputs %s: images are encoded without the cache",
                type(self).__name__,
                sorted(undeclared),
                list(self.vision_inputs),
            )
            self._warned_uncacheable = True
        return not undeclared

    _warned_uncacheable = False

    # -- the truncated tower ---------------------------------------------------------------------------------
    def feature_layer(self) -> int | None:
        """The 0-based index of the last vision layer whose output the model reads, for a family where nothing
        after it contributes (LLaVA reads ``hidden_states[-2]``: layer L-2 of L); ``None`` (the default): every
        layer runs. A family that declares it must read its features by absolute layer index."""
        return None

    def vision_layers_to_run(self, request: PruningRequest) -> int | None:
        """How many vision layers a request needs: through the feature layer and the tapped layer; ``None``: all
        (also where this transformers version records hidden states in a way the truncation does not know)."""
        last = self.feature_layer()
        if last is None or _hook_installer() is None:
            return None
        if request.reduction is not None:
            last = max(last, self.tap_index(request))
        return min(last + 1, len(self._untruncated if self._untruncated is not None else self.vision_layers()))

    def config_as_run(self, request: PruningRequest) -> Any:
        """The model's config with the vision depth the request runs (:meth:`vision_layers_to_run`): what FLOPs
        are counted from."""
        config = self.model.config
        needed = self.vision_layers_to_run(request)
        if needed is None or needed == int(config.vision_config.num_hidden_layers):
            return config
        shortened = copy.deepcopy(config)
        shortened.vision_config.num_hidden_layers = needed
        return shortened

    @contextmanager
    def truncated_tower(self, request: PruningRequest) -> Iterator[None]:
        """Within the block, the vision encoder holds only the layers the request needs
        (:meth:`vision_layers_to_run`): the others never run. Exact, because no output after them is read."""
        needed = self.vision_layers_to_run(request)
        layers = self.vision_layers()
        if needed is None or needed >= len(layers) or self._untruncated is not None:
            yield
            return
        if self._truncation is None or self._truncation[0] is not layers:
            owner, name = self._owner_of(layers)
            # transformers hooks its hidden-state recording onto the layers present at a model's first forward:
            # hook every model around the tower now, while it is whole, as its own first forward would. Once per
            # tower: the hooks stay, and the walk over every module costs more than a small tower's layer.
            install = _hook_installer()
            for module in self._models_around(layers):
                install(module)
            self._truncation = (layers, owner, name)
        _, owner, name = self._truncation
        setattr(owner, name, nn.ModuleList(list(layers)[:needed]))
        self._untruncated = layers
        try:
            yield
        finally:
            setattr(owner, name, layers)
            self._untruncated = None

    def _models_around(self, layers: nn.ModuleList) -> list[Any]:
        from transformers import PreTrainedModel

        return [
            module
            for module in self.model.modules()
            if isinstance(module, PreTrainedModel) and any(child is layers for child in module.modules())
        ]

    _untruncated: nn.ModuleList | None = None
    #: The whole tower's layers, the module holding them and its attribute name, once its models are hooked.
    _truncation: tuple[nn.ModuleList, nn.Module, str] | None = None

    def _owner_of(self, layers: nn.ModuleList) -> tuple[nn.Module, str]:
        for module in self.model.modules():
            for name, child in module.named_children():
                if child is layers:
                    return module, name
        raise ConfigError(f"{type(self).__name__}.vision_layers() is not a submodule of the model")

    def encoded_groups(self, batch: Mapping[str, torch.Tensor], request: PruningRequest) -> list[VisualGroup]:
        """:meth:`visual_groups` with each distinct image encoded once: images the cache holds are read back, the
        other distinct images of the batch are encoded together (duplicates once) and stored."""
        cache = self.vision_cache
        if cache is None or not cache.enabled or not self.cacheable(batch):
            with self.truncated_tower(request):
                return self.visual_groups(batch, request)
        context = self.cache_context(request)
        parts = [self.image_inputs(batch, image) for image in range(self.image_count(batch))]
        digests = [cache.image_digest(context, sorted(part.items())) for part in parts]
        entries: dict[str, VisualGroup] = {}
        for digest in dict.fromkeys(digests):
            entry = cache.get(digest, self.model)
            if isinstance(entry, VisualGroup):
                entries[digest] = entry
        missing = [digest for digest in dict.fromkeys(digests) if digest not in entries]
        if missing:
            chosen = [parts[digests.index(digest)] for digest in missing]
            sub_batch = {name: torch.cat([part[name] for part in chosen]) for name in chosen[0]}
            with self.truncated_tower(request):
                encoded = split_images(self.visual_groups(sub_batch, request))
            if len(encoded) != len(missing):
                raise RuntimeError(
                    f"{type(self).__name__}.visual_groups returned {len(encoded)} images for {len(missing)}: "
                    "its image_inputs do not split the batch by image"
                )
            cache.count_miss(len(missing))
            for digest, entry in zip(missing, encoded, strict=True):
                entries[digest] = entry
                cache.put(digest, entry, self.model)
        return join_images([entries[digest] for digest in digests], self.device, self.groups_images)

    def prefill_inputs(self, batch: Mapping[str, torch.Tensor], pipeline: PruningPipeline) -> LanguageInputs:
        """Encode the batch's images, prune their tokens with ``pipeline`` and assemble the LLM's prompt."""
        request = pipeline.request
        positions = self.resolve_positions(request.positions)
        groups = self.encoded_groups(batch, request)
        with self.phase("pruning"):
            placeholders = [group.placeholders for group in groups for _ in range(group.features.shape[0])]
            text = self.prompt_text(batch, placeholders) if request.text else None
            all_keys = batch.get(SAMPLE_KEYS)
            images: list[KeptImage] = []
            first = 0
            for group in groups:
                part = slice(first, first + group.features.shape[0])
                first = part.stop
                kept = prune_images(
                    pipeline,
                    group.attention,
                    group.features,
                    group.layout,
                    group.project,
                    None if text is None else (text[0][part], text[1][part]),
                    None if all_keys is None else all_keys[part],
                    group.cls_features,
                    group.deepstack,
                )
                images += kept if group.finish is None else [group.finish(image) for image in kept]
            with torch.no_grad():
                base_positions = self.base_positions(batch)
            return assemble_sequences(
                batch["input_ids"],
                batch["attention_mask"],
                base_positions,
                int(self.model.config.image_token_id),
                images,
                positions,
                self.model.get_input_embeddings(),
            )

    def prompt_text(
        self, batch: Mapping[str, torch.Tensor], placeholders: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's prompt text embeddings, for strategies that read them (:func:`prompt_text`)."""
        return prompt_text(
            batch["input_ids"],
            batch["attention_mask"],
            int(self.model.config.image_token_id),
            placeholders,
            self.model.get_input_embeddings(),
        )

    def patch_view(self, batch: Mapping[str, torch.Tensor], image: int) -> tuple[torch.Tensor, tuple[int, int]] | None:
        """Image ``image`` of a prepared batch as the vision encoder sees it ((H, W, 3) uint8) and the patch grid its
        visual tokens index (row-major), for figures of kept patches; ``None`` for families without a single grid."""
        return None

    def sample_costs(
        self, batch: Mapping[str, torch.Tensor], inputs: LanguageInputs, request: PruningRequest
    ) -> list[SampleCost]:
        """The family's FLOPs of each sample of a prefilled batch (:mod:`fopru.efficiency`), from the token counts
        that actually reached the LLM; the default says which family lacks them."""
        raise ConfigError(f"{type(self).__name__} has no FLOPs accounting yet")

    def flops(
        self, batch: Mapping[str, torch.Tensor], inputs: LanguageInputs, pipeline: PruningPipeline
    ) -> list[FlopsBreakdown]:
        """Analytic FLOPs of each sample of a prefilled batch: the family's costs (:meth:`sample_costs`), the tap
        (:func:`tap_flops` per tapped attention call) and the strategy's own products, the in-LLM method's."""
        request = pipeline.request
        breakdowns = []
        for sample, cost in enumerate(self.sample_costs(batch, inputs, request)):
            tapped = request.reduction is not None
            tap = sum(tap_flops(patches, cost.width, cost.has_cls) for patches in cost.tapped) if tapped else 0
            strategy = sum(image.pruning_flops for image in inputs.sample_images(sample))
            breakdowns.append(replace(cost.breakdown, pruning=float(tap + strategy)))
        return self.with_llm_pruning(breakdowns, inputs, pipeline)

    def with_llm_pruning(
        self, breakdowns: list[FlopsBreakdown], inputs: LanguageInputs, pipeline: PruningPipeline
    ) -> list[FlopsBreakdown]:
        """The families' breakdowns with the language model recounted layer by layer for ``pipeline.llm_pruning``
        (unchanged FLOPs without it), and the mean and pre-LLM-equivalent visual tokens filled in."""
        method = pipeline.llm_pruning
        config = self.model.config
        depth = int(config.get_text_config().num_hidden_layers)
        text_config = config.get_text_config()
        trailing = [0] * len(breakdowns)
        if method.selects and inputs.visual_mask is not None:
            trailing = trailing_text(inputs.visual_mask, inputs.attention_mask.bool()).sum(dim=1).tolist()
        result = []
        for sample, breakdown in enumerate(breakdowns):
            visual, text = int(inputs.visual_tokens[sample]), int(inputs.text_tokens[sample])
            per_layer = method.visual_per_layer(visual, depth, pipeline.budget)
            ranking = 0
            if method.selects and visual:
                ranking += method.prepare_flops(text_config, visual, trailing[sample])
            for number, drop in enumerate(method.schedule(visual, depth, pipeline.budget)):
                before = per_layer[drop.layer - 1]
                if 0 < min(drop.kept, before) < before:  # the generation ranks only when some but not all survive
                    ranking += method.boundary_flops(text_config, number, text + before, before, trailing[sample])
            result.append(with_layer_tokens(breakdown, config, per_layer, text, method_flops=ranking))
        return result

    # -- shared --------------------------------------------------------------------------------------------
    def check_positions(self, positions: str) -> None:
        """Refuse a position mode this family cannot honour (``auto`` is always fine)."""
        self.resolve_positions(positions)

    def resolve_positions(self, positions: str) -> Positions:
        """The position mode to use: ``auto`` becomes the family's natural mode (the first of ``position_modes``)."""
        if positions == "auto":
            positions = self.position_modes[0]
        if positions not in self.position_modes:
            raise ConfigError(
                f"{type(self).__name__} supports reorder.positions in {['auto', *self.position_modes]}, "
                f"got {positions!r}"
            )
        return positions  # type: ignore[return-value]

    def tap_index(self, source: PruningRequest | SignificanceSource) -> int:
        """The vision layer to tap: ``source.layer`` (Python-style index), else the family default."""
        count = len(self._untruncated if self._untruncated is not None else self.vision_layers())
        index = self.default_tap_layer() if source.layer is None else source.layer
        if not -count <= index < count:
            raise ConfigError(f"significance.layer={index} is outside the vision encoder's {count} layers")
        return index % count

    def tap(
        self, source: PruningRequest | SignificanceSource, has_cls: bool
    ) -> AbstractContextManager[VisionAttentionTap | None]:
        """A tap on the layer ``source`` names (a request, or a significance source), or a no-op when it reads no
        attention (``reduction`` is ``None``)."""
        if source.reduction is None:
            return nullcontext()
        layer = self.vision_layers()[self.tap_index(source)]
        return VisionAttentionTap(self.attention_of(layer), source.reduction, has_cls)

    def format_prompt(self, text: str) -> str:
        """One image and ``text`` as a user turn, ready for generation: the processor's chat template if it has
        one (real checkpoints), else :attr:`prompt_template`."""
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            prompt: str = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
            return prompt
        return self.prompt_template.format(text=text)

    def prepare(
        self, images: Sequence[Any], prompts: Sequence[str], sample_keys: Sequence[int] | None = None
    ) -> Mapping[str, torch.Tensor]:
        """Run the processor on images and prompts (one ``<image>`` per image in the prompt), left-padded.

        ``sample_keys``, one per image (the key of the sample it belongs to), go into the batch as
        :data:`SAMPLE_KEYS`, so that random pruning draws per sample, not per batch position.
        """
        batch = self.processor(images=list(images), text=list(prompts), padding=True, return_tensors="pt")
        prepared = {key: value.to(self.device) for key, value in batch.items()}
        if sample_keys is not None:
            if len(sample_keys) != len(images):
                raise ValueError(f"{len(images)} images but {len(sample_keys)} sample keys: give one key per image")
            prepared[SAMPLE_KEYS] = torch.tensor(list(sample_keys), dtype=torch.long)
        return prepared

    def language_forward(
        self,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: DynamicCache,
        inputs_embeds: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Language model forward on embeddings or ids with explicit positions; returns logits."""
        positions = position_ids[0] if position_ids.shape[0] == 1 else position_ids
        output = self.model(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        logits: torch.Tensor = output.logits
        return logits

    def prefill_forward(self, inputs: LanguageInputs, cache: DynamicCache, logits_to_keep: int = 0) -> torch.Tensor:
        """The language model's forward on a prefilled prompt, filling ``cache``; returns logits. Families whose
        visual features enter more than the input embeddings (Qwen3-VL's DeepStack) override it."""
        if inputs.deepstack:
            raise ConfigError(f"{type(self).__name__} cannot inject DeepStack features into its language model")
        return self.language_forward(
            inputs.position_ids,
            inputs.attention_mask,
            cache,
            inputs_embeds=inputs.inputs_embeds,
            logits_to_keep=logits_to_keep,
        )

    def prefill_logits(self, inputs: LanguageInputs) -> torch.Tensor:
        """(B, L, V) logits of the whole prompt."""
        with torch.no_grad():
            return self.prefill_forward(inputs, DynamicCache())

    def shares_prefix(self, pipeline: PruningPipeline) -> bool:
        """Whether :meth:`generate` prefills each image's prompt prefix once for all its rows: the switch is on,
        the family's prefill splits (:attr:`splits_prefill`), and the kept visual tokens cannot depend on the
        question (no text-guided strategy, no in-LLM pruning)."""
        return (
            self.shared_prefix and self.splits_prefill and not pipeline.request.text and not pipeline.llm_pruning.active
        )

    def shared_prefill(self, inputs: LanguageInputs, cache: DynamicCache) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefill with the prompt prefix common to the rows of one image (system text and its kept tokens)
        run once per image (:func:`~fopru.models.shared_prefix.split_shared_prefix`): its KV cache is expanded to
        the image's rows and each row's remainder is prefilled on top, at the positions that continue it.

        A numerically equivalent rewrite of :meth:`prefill_forward` (the cache holds the same keys and values at the
        same positions; only the grouping of the arithmetic changes, as with the batch size), so it is not part of
        what names a results folder. Returns the (B, 1, V) logits of every row's last prompt token and the (B, C)
        attention mask over the filled cache (padding may sit between a row's prefix and its remainder); a batch
        whose rows share no image is prefilled as it is, with its own mask.
        """
        split = split_shared_prefix(inputs)
        if split is None:
            return self.prefill_forward(inputs, cache, logits_to_keep=1), inputs.attention_mask
        self.prefill_forward(split.prefix, cache, logits_to_keep=1)
        cache.reorder_cache(split.group_of_row)  # type: ignore[arg-type]  # LongTensor is Tensor at runtime
        logits = self.language_forward(
            split.suffix_positions, split.attention_mask, cache, inputs_embeds=split.suffix_embeds, logits_to_keep=1
        )
        return logits, split.attention_mask

    def staged_decoder(self) -> StagedDecoder:
        """The language model as decoder layers and lm_head, for in-LLM pruning (every family nests it the same)."""
        return StagedDecoder(self.model.model.language_model, self.model.lm_head)

    def generate(
        self, batch: Mapping[str, torch.Tensor], pipeline: PruningPipeline, max_new_tokens: int = 16
    ) -> Generation:
        """Greedy decoding after pruning; the KV cache holds only text and kept visual tokens.

        With an in-LLM method (``pipeline.llm_pruning``), the language model runs segment by segment
        (:class:`~fopru.models.staged.StagedDecoder`): visual tokens leave the sequence at its boundaries and the
        cache of every later layer holds only the survivors. Without one, the stock forward runs.
        """
        self.check_positions(pipeline.request.positions)
        tokenizer = self.processor.tokenizer
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        staged = self.staged_decoder() if pipeline.llm_pruning.active else None
        segments: list[Segment] = []
        with torch.no_grad():
            inputs = self.prefill_inputs(batch, pipeline)
            cache = DynamicCache()
            mask = inputs.attention_mask
            with self.phase("prefill"):
                if self.shares_prefix(pipeline):
                    logits, mask = self.shared_prefill(inputs, cache)
                elif staged is None:
                    logits = self.prefill_forward(inputs, cache, logits_to_keep=1)
                else:
                    if inputs.visual_mask is None:
                        raise ConfigError("in-LLM pruning needs the inputs' visual_mask (built by assemble_sequences)")
                    schedules = [
                        pipeline.llm_pruning.schedule(int(visual), staged.depth, pipeline.budget)
                        for visual in inputs.visual_tokens.tolist()
                    ]
                    logits, segments = staged.prefill(
                        inputs.inputs_embeds,
                        inputs.attention_mask,
                        inputs.position_ids,
                        inputs.visual_mask,
                        schedules,
                        cache,
                        ranking=pipeline.llm_pruning.ranking,
                        renumber=pipeline.llm_pruning.renumber,
                        method=pipeline.llm_pruning,
                        deepstack=inputs.deepstack,
                    )
            prompt_cache_length = cache.get_seq_length()
            layer_cache_lengths = tuple(cache.get_seq_length(layer) for layer in range(len(cache.layers)))
            token = logits[:, -1].argmax(dim=-1)
            finished = token == eos
            generated = [token]
            position = inputs.next_position
            for _ in range(max_new_tokens - 1):
                if bool(finished.all()):
                    break
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                step_positions = position[None, :, None].expand(inputs.position_ids.shape[0], -1, 1)
                with self.phase("decode"):
                    if staged is None:
                        logits = self.language_forward(step_positions, mask, cache, input_ids=token[:, None])
                    else:
                        logits = staged.decode(token[:, None], step_positions, segments, cache)
                position = position + 1
                token = logits[:, -1].argmax(dim=-1).masked_fill(finished, pad)
                finished = finished | (token == eos)
                generated.append(token)
        tokens = torch.stack(generated, dim=1)
        texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
        survivors = tuple(_survivors(segment, inputs.attention_mask.shape[1]) for segment in segments[1:])
        return Generation(
            tokens, [text.strip() for text in texts], inputs, prompt_cache_length, layer_cache_lengths, survivors
        )


def _hook_installer() -> Any:
    """transformers' installer of hidden-state recording hooks, or ``None`` where this version has none."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:
        return None
    return maybe_install_capturing_hooks


def _survivors(segment: Segment, length: int) -> torch.Tensor:
    """(B, length) bool: the prefill positions a segment holds."""
    index = segment.prompt_index
    present = torch.zeros((index.shape[0], length + 1), dtype=torch.bool, device=index.device)
    present.scatter_(1, index.masked_fill(index < 0, length), True)
    return present[:, :length]
