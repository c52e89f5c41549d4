"""Training batches: a benchmark's training split as multi-turn conversations about each image, with a held-out
validation set of whole images.

Like LLaVA's instruction data, one sequence holds one image and several of its questions as successive turns
(``USER: <image>\\n<q1> ASSISTANT: <a1></s>USER: <q2> ASSISTANT: <a2></s>...``), with the loss on the answers only.
The image is encoded once for all its questions, so a step carries several times more answers for its cost than
one question per sequence. ``turns="chained"`` (the default) is that plain multi-turn conversation, whose first turn
is exactly the prompt evaluation prefills. With ``turns="isolated"`` the turns share only the image prefix: an
attention mask keeps each turn from seeing the others, so every turn is exactly such a prompt (one question alone)
and no answer can be read off an earlier one (``is there a circle?`` after ``what shape ...? circle``).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from fopru.data.base import Benchmark
from fopru.errors import ConfigError
from fopru.models.base import TargetModel
from fopru.train.recipe import TURN_LAYOUTS, TrainingRecipe

IGNORE = -100


def is_yes_no(answer: str) -> bool:
    """Whether an answer is of VQA's ``yes/no`` answer type (the others: ``number``, ``other``)."""
    return answer.strip().strip(".").lower() in ("yes", "no")


def held_out_positions(groups: Sequence[Any], fraction: float, seed: int) -> set[int]:
    """Row positions of a seeded ``fraction`` of the distinct ``groups`` (images): no image is on both sides."""
    distinct = sorted(set(groups), key=str)
    random.Random(seed).shuffle(distinct)
    held = set(distinct[: max(1, round(len(distinct) * fraction))])
    return {position for position, group in enumerate(groups) if group in held}


def answer_choices(prompts: Sequence[str], answers: Sequence[str], positions: Sequence[int]) -> dict[str, list[str]]:
    """Each question (prompt) at ``positions`` -> the answers it received there, sorted: what the answer probe chooses
    from when the question is asked (``what shape ...`` -> the shapes, ``what color ...`` -> the colours)."""
    choices: dict[str, set[str]] = defaultdict(set)
    for position in positions:
        choices[prompts[position]].add(str(answers[position]))
    return {prompt: sorted(seen) for prompt, seen in choices.items()}


def yes_no_weights(
    prompts: Sequence[str], answers: Sequence[str], positions: Sequence[int]
) -> dict[tuple[str, str], float]:
    """(question, answer) -> loss weight for the yes/no answers at ``positions``: ``1 / (2 x the share of that answer
    among the question's)``, so that under the weights each question is answered yes and no equally often and its
    wording alone predicts nothing (easy-VQA's ``is there a red shape?`` is ``no`` 86% of the time). A question always
    answered the same way keeps weight 1."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for position in positions:
        if is_yes_no(str(answers[position])):
            counts[prompts[position]][str(answers[position])] += 1
    weights = {}
    for prompt, seen in counts.items():
        total = sum(seen.values())
        for answer, count in seen.items():
            weights[(prompt, answer)] = total / (len(seen) * count)
    return weights


def conversations(groups: Sequence[Any], positions: Sequence[int], max_turns: int | None, seed: int) -> list[list[int]]:
    """The rows at ``positions`` grouped by image, each image's rows in a seeded random order, cut into
    conversations of at most ``max_turns`` rows (None: one conversation per image)."""
    by_group: dict[Any, list[int]] = defaultdict(list)
    for position in positions:
        by_group[groups[position]].append(position)
    rng = random.Random(seed)
    result = []
    for group in sorted(by_group, key=str):
        rows = by_group[group]
        rng.shuffle(rows)
        size = max_turns or len(rows)
        result += [rows[start : start + size] for start in range(0, len(rows), size)]
    return result


class ConversationSet(Dataset[dict[str, Any]]):
    """One item per conversation: the image and its (prompt, answer) turns."""

    def __init__(self, dataset: Any, chunks: list[list[int]]) -> None:
        self.dataset = dataset
        self.prompts = list(dataset["prompt"])
        self.answers = [str(answer) for answer in dataset["answer"]]
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rows = self.chunks[index]
        return {
            "image": self.dataset[rows[0]]["image"],
            "turns": [(self.prompts[row], self.answers[row]) for row in rows],
        }


class ConversationCollator:
    """Conversations -> the model's inputs for teacher forcing, left-padded, loss on the answer tokens only.

    ``turns="isolated"``: every turn is the prompt evaluation uses (:meth:`TargetModel.format_prompt`, the processor
    expanding the image placeholder), the turns sharing the image prefix and otherwise masked from each other
    (``attention_mask`` is then (batch, 1, length, length), True: may attend; see :meth:`isolated`). ``chained``: the
    first turn is that prompt, later turns follow :attr:`TargetModel.follow_up_template`. Each answer is
    ``" <answer></s>"``; positions count real tokens from 0, as the adapters number an unpruned prompt. ``weights``
    ((question, answer) -> loss weight, 1 for pairs not in it) add ``label_weights`` to the batch.
    ``answer_tokens`` (the first token of each turn's answer; -100 for yes/no answers, which the image alone cannot
    predict, and past the last turn) are the answer probe's targets and ``answer_choices`` (turn x vocabulary) the
    first tokens it chooses from: the question's answers in ``choices`` (all tokens for questions not in it).
    ``augment="dihedral"`` turns each image's pixels by a seeded random one of the 8 symmetries of the square;
    ``"placement"`` also scales the shape and moves it to a random place where it stays whole (:func:`place_shape`).
    ``text=False`` (the vision phase) leaves out the token sequences: pixels, probe targets and ``patch_coverage``
    ((batch, patches) float: the fraction of each patch's pixels on the shape, :func:`patch_coverage`).
    """

    def __init__(
        self,
        target: TargetModel,
        augment: str = "none",
        seed: int = 0,
        choices: dict[str, list[str]] | None = None,
        text: bool = True,
        turns: str = "chained",
        weights: dict[tuple[str, str], float] | None = None,
    ) -> None:
        if turns not in TURN_LAYOUTS:
            raise ConfigError(f"train.turns={turns!r} is not one of {', '.join(TURN_LAYOUTS)}")
        self.target = target
        self.choices = choices or {}
        self.text = text
        self.turns = turns
        self.weights = weights
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)

    def transform(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` (channels, height, width) under the augmentation."""
        if self.augment == "none":
            return pixels
        symmetry = int(torch.randint(8, (1,), generator=self.generator))
        turned = torch.rot90(pixels, symmetry % 4, dims=(-2, -1))
        turned = turned.flip(-1) if symmetry >= 4 else turned
        if self.augment == "placement":
            return place_shape(turned, self.generator)
        return turned

    def ids(self, text: str) -> list[int]:
        return list(self.target.processor.tokenizer(text, add_special_tokens=False).input_ids)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.probe_targets(items)
        if not self.text:
            pixels = self.target.processor.image_processor([item["image"] for item in items], return_tensors="pt")
            pixel_values = torch.stack([self.transform(p) for p in pixels["pixel_values"]])
            coverage = patch_coverage(pixel_values, int(self.target.processor.patch_size))
            return {"pixel_values": pixel_values, "patch_coverage": coverage, **batch}
        return {**batch, **self.sequences(items)}

    def probe_targets(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """``answer_tokens`` and ``answer_choices`` (see the class docstring)."""
        turns = max(len(item["turns"]) for item in items)
        answer_tokens = torch.full((len(items), turns), IGNORE, dtype=torch.long)
        answer_choices = torch.zeros((len(items), turns, len(self.target.processor.tokenizer)), dtype=torch.bool)
        for sample, item in enumerate(items):
            for turn, (prompt, answer) in enumerate(item["turns"]):
                if not is_yes_no(answer):
                    answer_tokens[sample, turn] = self.ids(f" {answer}")[0]
                if prompt in self.choices:
                    answer_choices[sample, turn, [self.ids(f" {choice}")[0] for choice in self.choices[prompt]]] = True
                else:
                    answer_choices[sample, turn] = True
        return {"answer_tokens": answer_tokens, "answer_choices": answer_choices}

    def sequences(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The conversations' token ids, labels, mask and positions, the (augmented) pixels, and with
        :attr:`weights` set, ``label_weights``: each label's loss weight (0 where there is none)."""
        processor = self.target.processor
        layouts: list[Layout] = []
        pixel_values = []
        for item in items:
            (first_prompt, _), *_ = item["turns"]
            first = processor(
                images=[item["image"]], text=[self.target.format_prompt(first_prompt)], return_tensors="pt"
            )
            pixel_values.append(self.transform(first["pixel_values"][0]))
            prompt: list[int] = first["input_ids"][0].tolist()
            lay_out = self.isolated if self.turns == "isolated" else self.chained
            layouts.append(lay_out(prompt, item["turns"]))
        length = max(len(layout.tokens) for layout in layouts)
        fills = {"tokens": processor.tokenizer.pad_token_id, "labels": IGNORE, "positions": 0, "segments": -1}
        columns = {name: torch.full((len(layouts), length), fill, dtype=torch.long) for name, fill in fills.items()}
        label_weights = torch.zeros((len(layouts), length))
        for sample, layout in enumerate(layouts):
            pad = length - len(layout.tokens)
            for name, column in columns.items():
                column[sample, pad:] = torch.tensor(getattr(layout, name))
            label_weights[sample, pad:] = torch.tensor(layout.weights)
        segments = columns["segments"]
        batch = {
            "input_ids": columns["tokens"],
            "attention_mask": turn_attention_mask(segments) if self.turns == "isolated" else (segments >= 0).long(),
            "pixel_values": torch.stack(pixel_values),
            "position_ids": columns["positions"],
            "labels": columns["labels"],
        }
        if self.weights is not None:
            batch["label_weights"] = label_weights
        return batch

    def reply(self, question: str, answer: str) -> tuple[list[int], list[float]]:
        """The answer's tokens (`` <answer></s>``) and their loss weights (see :func:`yes_no_weights`)."""
        tokens = self.ids(f" {answer}{self.target.processor.tokenizer.eos_token}")
        weight = (self.weights or {}).get((question, answer), 1.0)
        return tokens, [weight] * len(tokens)

    def chained(self, prompt: list[int], turns: Sequence[tuple[str, str]]) -> Layout:
        """One causal sequence: ``prompt`` (the first turn, image expanded), its answer, then each later turn as
        :attr:`TargetModel.follow_up_template` and its answer (all in segment 0)."""
        layout = Layout(list(prompt), [IGNORE] * len(prompt), [], [], [0.0] * len(prompt))
        for turn, (question, answer) in enumerate(turns):
            if turn > 0:
                asked = self.ids(self.target.follow_up_template.format(text=question))
                layout.extend(asked, IGNORE, 0.0)
            reply, weights = self.reply(question, answer)
            layout.extend(reply, reply, weights)
        layout.positions.extend(range(len(layout.tokens)))
        layout.segments.extend([0] * len(layout.tokens))
        return layout

    def isolated(self, prompt: list[int], turns: Sequence[tuple[str, str]]) -> Layout:
        """The turns' prompts share their longest common token prefix (the image and what surrounds it), which is
        laid out once (segment 0); each turn's rest and answer follow as segment 1, 2, ... with positions that
        continue the prefix's, so that under :func:`turn_attention_mask` every turn is exactly its own evaluation
        prompt (``prompt`` is the first turn's, image expanded) followed by its answer."""
        tokenizer = self.target.processor.tokenizer
        texts = [list(tokenizer(self.target.format_prompt(question)).input_ids) for question, _ in turns]
        shared = 0
        while all(len(text) > shared and text[shared] == texts[0][shared] for text in texts):
            shared += 1
        cut = len(prompt) - (len(texts[0]) - shared)  # the image placeholder is expanded in ``prompt`` only
        if prompt[cut:] != texts[0][shared:]:
            raise ValueError("the processor's prompt does not end with the tokenizer's tokens of the question")
        layout = Layout(prompt[:cut], [IGNORE] * cut, list(range(cut)), [0] * cut, [0.0] * cut)
        for turn, ((question, answer), text) in enumerate(zip(turns, texts, strict=True), start=1):
            asked = text[shared:]
            reply, weights = self.reply(question, answer)
            layout.extend(asked, IGNORE, 0.0)
            layout.extend(reply, reply, weights)
            layout.positions.extend(range(cut, cut + len(asked) + len(reply)))
            layout.segments.extend([turn] * (len(asked) + len(reply)))
        return layout


#: A pixel belongs to the shape where some channel differs from the background's by more than this, in the
#: processor's normalised units (CLIP's std is about 0.27: about 35 of 255 grey levels). easy-VQA's backgrounds are
#: near-white with a few levels of noise; its darkest-to-lightest shape colours all clear this by far.
SHAPE_THRESHOLD = 0.5
#: Scale range of :func:`place_shape` (bounded further so that the shape stays inside the image).
SCALES = (0.7, 1.3)


def shape_mask(pixels: torch.Tensor) -> torch.Tensor:
    """(..., height, width) bool: the pixels of (..., channels, height, width) ``pixels`` that are not background.

    The background is the per-channel median of the image: one flat colour covering most of an easy-VQA image.
    """
    flat = pixels.flatten(-2)
    background = flat.median(dim=-1).values[..., None, None]
    return (pixels - background).abs().amax(dim=-3) > SHAPE_THRESHOLD


def patch_coverage(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(batch, patches) float32: the fraction of each ``patch_size`` square's pixels on the shape, raster order
    (the vision tower's patch order) of (batch, channels, height, width) ``pixels``."""
    mask = shape_mask(pixels).float()[:, None]
    return torch.nn.functional.avg_pool2d(mask, patch_size).flatten(1)


def place_shape(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``pixels`` (channels, height, width) with the shape scaled by a random factor in :data:`SCALES` about its
    bounding box's centre and moved to a random place where its box stays inside the image; the background
    colour fills what is uncovered. An image without a shape is returned as it is."""
    mask = shape_mask(pixels)
    rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
    if rows.numel() == 0:
        return pixels
    height, width = mask.shape
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    extent = max(bottom - top, right - left)
    low, high = SCALES[0], min(SCALES[1], min(height, width) / extent)  # high >= 1 > low: the box always fits
    uniform = torch.rand(3, generator=generator)
    scale = low + float(uniform[0]) * (high - low)
    box_height, box_width = (bottom - top) * scale, (right - left) * scale
    # The box's new centre, in pixel coordinates (pixel i spans [i, i + 1]), anywhere the scaled box fits.
    new_row = box_height / 2 + float(uniform[1]) * (height - box_height)
    new_col = box_width / 2 + float(uniform[2]) * (width - box_width)
    old_row, old_col = (top + bottom) / 2, (left + right) / 2
    # affine_grid maps each output location to the input location it reads, both normalised to [-1, 1]
    # (align_corners=False: x = 2 u / size - 1); input u = old centre + (output u - new centre) / scale.
    theta = torch.tensor(
        [
            [1 / scale, 0.0, 1 / scale - 1 + 2 * (old_col - new_col / scale) / width],
            [0.0, 1 / scale, 1 / scale - 1 + 2 * (old_row - new_row / scale) / height],
        ]
    )
    grid = torch.nn.functional.affine_grid(theta[None], [1, *pixels.shape], align_corners=False)
    background = pixels.flatten(-2).median(dim=-1).values[:, None, None]
    moved = torch.nn.functional.grid_sample(
        (pixels - background)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )[0]
    return moved + background


@dataclass
class Layout:
    """One conversation's sequence: token ids, labels (-100: no loss), positions, segments (0: shared by all turns;
    a turn's own tokens: its number when turns are isolated) and label weights."""

    tokens: list[int]
    labels: list[int]
    positions: list[int]
    segments: list[int]
    weights: list[float]

    def extend(self, tokens: list[int], labels: list[int] | int, weights: list[float] | float) -> None:
        """Append ``tokens`` with their labels and weights (one value: the same for all) but no positions or
        segments (the caller's)."""
        self.tokens += tokens
        self.labels += labels if isinstance(labels, list) else [labels] * len(tokens)
        self.weights += weights if isinstance(weights, list) else [weights] * len(tokens)


def turn_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(batch, 1, length, length) boolean attention mask (True: may attend) of isolated turns: a token sees the
    earlier tokens of its own segment and of the shared prefix (segment 0), never another turn nor padding (-1).
    Padding rows see themselves only, so that no row is empty."""
    length = segment_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    keys = segment_ids[:, None, :]
    visible = (keys == 0) | (keys == segment_ids[:, :, None])
    mask = causal & visible & (keys >= 0)
    mask |= torch.eye(length, dtype=torch.bool)
    return mask[:, None]


class TrainingDataModule(L.LightningDataModule):
    """The benchmark's training split as conversations of at most ``max_turns`` questions (None: all of an image's),
    minus held-out whole images used for validation."""

    def __init__(
        self,
        benchmark: Benchmark,
        target: TargetModel,
        recipe: TrainingRecipe,
        seed: int,
        batch_size: int,
        max_turns: int | None,
        text: bool = True,
    ) -> None:
        super().__init__()
        self.benchmark = benchmark
        self.train_collate = ConversationCollator(target, recipe.augment, seed, text=text, turns=recipe.turns)
        self.collate = ConversationCollator(target, text=text, turns=recipe.turns)
        self.recipe = recipe
        self.seed = seed
        self.batch_size = batch_size
        self.max_turns = max_turns
        self.train_set: ConversationSet | None = None
        self.val_set: ConversationSet | None = None

    def setup(self, stage: str | None = None) -> None:
        dataset = self.benchmark.load()
        groups = list(dataset["image_id"] if "image_id" in dataset.column_names else dataset["sample_id"])
        held = held_out_positions(groups, self.recipe.val_fraction, self.seed)
        train = [position for position in range(len(dataset)) if position not in held]
        val = sorted(held)
        if self.recipe.val_samples is not None and len(val) > self.recipe.val_samples:
            val = sorted(random.Random(self.seed).sample(val, self.recipe.val_samples))
        turns = self.max_turns
        prompts, answers = list(dataset["prompt"]), [str(answer) for answer in dataset["answer"]]
        self.train_collate.choices = self.collate.choices = answer_choices(prompts, answers, train)
        if self.recipe.balance_yes_no:
            self.train_collate.weights = yes_no_weights(prompts, answers, train)
        self.train_set = ConversationSet(dataset, conversations(groups, train, turns, self.seed))
        self.val_set = ConversationSet(dataset, conversations(groups, val, turns, self.seed))

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        assert self.train_set is not None
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=self.train_collate,
        )

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        assert self.val_set is not None
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=self.collate)
