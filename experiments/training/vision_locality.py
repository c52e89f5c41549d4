"""What the mini LLaVA's vision tower puts in each patch token, where its tapped attention falls, and how the model
answers when pruned: (a) linear probes on single patch tokens, (b) the share of focal significance and of [CLS]
attention on the shape's patches, (c) exact match at keep=0.1 for rank, random and centre.

    python experiments/training/vision_locality.py fopru/checkpoints/mini_llava \
        [--lightning <run>/lightning/vision/last.ckpt] [--images 1000] [--pruning [--limit 2000]]

Everything is read at the layer the projector reads (``vision_feature_layer=-2``) and from its attention, the one the
framework taps. A patch is *on the shape* when at least half its pixels are, *background* when none is
(:func:`fopru.train.data.patch_coverage`, the mask the vision phase trains on). Probes are multinomial logistic
regressions fitted on patch tokens of training images and scored on those of test images. ``--pruning`` runs the
framework's own evaluation (``train_eval.py -m``) of the checkpoint unpruned and at keep=0.1 (with ``--lightning``, of
the checkpoint's architecture and processor with the Lightning checkpoint's weights, saved to a temporary folder).
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import easy_vqa
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from fopru.api import focal_significance
from fopru.significance.attention import summarize_attention
from fopru.train.data import patch_coverage

COLOURS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
SHAPES = ("circle", "rectangle", "triangle")
ON_SHAPE = 0.5
BUDGET = 0.1
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TowerOutputs:
    """Per image: patch tokens (n, N, D), shape coverage (n, N), focal significance and [CLS] attention (n, N)."""

    tokens: torch.Tensor
    coverage: torch.Tensor
    focal: torch.Tensor
    cls: torch.Tensor
    chose_received: torch.Tensor


def load(checkpoint: str, lightning: str | None) -> tuple[Any, Any]:
    """(model, processor) of a saved checkpoint with eager attention (so the tower returns its attention), its
    weights replaced by those of a ``stage=train`` Lightning checkpoint if given."""
    model = LlavaForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="eager").eval()
    if lightning:
        state = torch.load(lightning, map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return model, LlavaProcessor.from_pretrained(checkpoint)


def image_labels(split: str) -> dict[int, tuple[int, int]]:
    """image id -> (colour index, shape index), from the split's ``what color`` / ``what shape`` answers."""
    get = easy_vqa.get_train_questions if split == "train" else easy_vqa.get_test_questions
    colour: dict[int, int] = {}
    shape: dict[int, int] = {}
    for question, answer, image in zip(*get(), strict=True):
        words = set(re.findall(r"\w+", question))
        if "what" in words and answer in COLOURS:
            colour[image] = COLOURS.index(answer)
        elif "what" in words and answer in SHAPES:
            shape[image] = SHAPES.index(answer)
    return {image: (colour[image], shape[image]) for image in colour if image in shape}


@torch.no_grad()
def tower_outputs(model: Any, processor: Any, paths: list[str]) -> TowerOutputs:
    """The tapped layer's patch tokens and attention summaries of ``paths``' images, 100 at a time."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in TowerOutputs.__dataclass_fields__}
    layer = model.config.vision_feature_layer
    for start in range(0, len(paths), 100):
        images = [Image.open(path).convert("RGB") for path in paths[start : start + 100]]
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        output = model.model.vision_tower(pixels, output_hidden_states=True, output_attentions=True)
        attention = output.attentions[layer]  # the layer producing hidden_states[layer]
        summary = summarize_attention(attention, has_cls=True)
        focal = focal_significance(attention)
        parts["tokens"].append(output.hidden_states[layer][:, 1:])
        parts["coverage"].append(patch_coverage(pixels, int(processor.patch_size)))
        parts["focal"].append(focal)
        assert summary.cls is not None
        parts["cls"].append(summary.cls)
        parts["chose_received"].append(torch.isclose(focal, summary.received).all(dim=1))
    return TowerOutputs(**{name: torch.cat(values) for name, values in parts.items()})


def fit_probe(inputs: torch.Tensor, targets: torch.Tensor, classes: int) -> torch.nn.Linear:
    """A multinomial logistic regression (L2 1e-4) on standardised ``inputs``, fitted by L-BFGS."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(inputs.shape[1], classes)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(inputs), targets) + 1e-4 * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


def probe_accuracy(
    train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], classes: int, balanced: bool
) -> tuple[float, float]:
    """(accuracy of a probe fitted on ``train`` and scored on ``test``, that of always answering the majority class
    of ``train``); ``balanced``: the mean of the per-class recalls instead (then the majority's is 1 / classes)."""
    (train_x, train_y), (test_x, test_y) = train, test
    mean, std = train_x.mean(dim=0), train_x.std(dim=0).clamp_min(1e-6)
    probe = fit_probe((train_x - mean) / std, train_y, classes)
    with torch.no_grad():
        predicted = probe((test_x - mean) / std).argmax(dim=1)
    if balanced:
        recalls = [float((predicted[test_y == c] == c).float().mean()) for c in range(classes) if (test_y == c).any()]
        return sum(recalls) / len(recalls), 1 / classes
    majority = int(torch.bincount(train_y, minlength=classes).argmax())
    return float((predicted == test_y).float().mean()), float((test_y == majority).float().mean())


def patch_rows(outputs: TowerOutputs, labels: torch.Tensor, where: torch.Tensor, limit: int) -> tuple[Any, Any]:
    """(tokens, per-image labels) of the patches ``where`` is True, at most ``limit`` of them (seeded)."""
    images, patches = where.nonzero(as_tuple=True)
    if images.numel() > limit:
        keep = torch.randperm(images.numel(), generator=torch.Generator().manual_seed(0))[:limit]
        images, patches = images[keep], patches[keep]
    return outputs.tokens[images, patches], labels[images]


def locality(train: TowerOutputs, train_labels: torch.Tensor, test: TowerOutputs, test_labels: torch.Tensor) -> None:
    """(a): what a single patch token tells a linear probe about itself and about the whole image."""
    print("(a) linear probes on single patch tokens (fitted on training images, scored on test images)")
    rows = []
    for outputs in (train, test):
        on, off = outputs.coverage >= ON_SHAPE, outputs.coverage == 0
        where = on | off
        images, patches = where.nonzero(as_tuple=True)
        rows.append((outputs.tokens[images, patches], on[images, patches].long()))
    accuracy, chance = probe_accuracy(rows[0], rows[1], 2, balanced=True)
    print(f"    own content, on the shape or background (balanced accuracy): {accuracy:.1%} (chance {chance:.1%})")
    for region, test_where, train_where in (
        ("background", test.coverage == 0, train.coverage == 0),
        ("shape", test.coverage >= ON_SHAPE, train.coverage >= ON_SHAPE),
    ):
        for name, column, classes in (("colour", 0, len(COLOURS)), ("shape", 1, len(SHAPES))):
            fitted = patch_rows(train, train_labels[:, column], train_where, 60000)
            scored = patch_rows(test, test_labels[:, column], test_where, 60000)
            accuracy, majority = probe_accuracy(fitted, scored, classes, balanced=False)
            print(f"    the image's {name} from one {region} patch: {accuracy:.1%} (majority class {majority:.1%})")


def attention_share(test: TowerOutputs) -> None:
    """(b): how much of the focal significance and of the [CLS] attention lies on the shape's patches, and how
    often the top 10% of patches by each (and by position alone) include a patch on the shape."""
    touched = test.coverage > 0
    area = touched.float().mean(dim=1)
    count = max(1, int(BUDGET * test.coverage.shape[1]))
    on = test.coverage >= ON_SHAPE
    print(f"(b) attention of the tapped layer on {test.coverage.shape[0]} test images")
    print(f"    patches touching the shape: {area.mean():.1%} of all (mean per image)")
    print(f"    focal significance picks s1 (attention received) on {test.chose_received.float().mean():.1%} of images")
    for name, scores in (("focal significance", test.focal), ("[CLS] attention", test.cls)):
        share = (scores.clamp_min(0) * touched).sum(dim=1) / scores.clamp_min(0).sum(dim=1)
        top = scores.argsort(dim=1, descending=True, stable=True)[:, :count]
        hit = on.gather(1, top).any(dim=1).float().mean()
        inside = on.gather(1, top).float().mean()
        print(
            f"    {name}: {share.mean():.1%} of its mass on the shape's patches; its top {count} patches include one "
            f"on the shape on {hit:.1%} of images ({inside:.1%} of them on it)"
        )
    # Position-only and random references for the same hit rate.
    side = int(test.coverage.shape[1] ** 0.5)
    centre_row = torch.arange(side, dtype=torch.float64)[:, None] + 0.5 - side / 2
    distance = (centre_row**2 + centre_row.T**2).flatten()
    nearest = torch.sort(distance, stable=True).indices[:count]
    print(f"    centre: its {count} patches include one on the shape on {on[:, nearest].any(dim=1).float().mean():.1%}")
    generator = torch.Generator().manual_seed(0)
    draws = torch.rand(on.shape, generator=generator).argsort(dim=1)[:, :count]
    hit = on.gather(1, draws).any(dim=1).float().mean()
    print(f"    random: {count} patches include one on the shape on {hit:.1%}")


def pruning(checkpoint: str, limit: int | None) -> None:
    """(c): the framework's evaluation of ``checkpoint`` unpruned and at keep=0.1 with rank, random and centre."""
    with tempfile.TemporaryDirectory(prefix="fopru-locality-") as folder:
        command = [sys.executable, str(ROOT / "train_eval.py"), "-m", f"model.checkpoint={Path(checkpoint).resolve()}"]
        command += ["strategy=none,rank,random,centre", f"keep={BUDGET}", "logger=none", "latency_samples=0"]
        command += ["figure_samples=0", "batch_size=32", f"results_dir={folder}/results"]
        command += [f"hydra.sweep.dir={folder}/sweep"] + ([f"data.limit={limit}"] if limit else [])
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        [table] = Path(folder, "sweep").rglob("results.csv")
        with table.open() as rows:
            results = {row["strategy"]: row for row in csv.DictReader(rows)}
    samples = next(iter(results.values()))["samples"]
    print(f"(c) exact match on {samples} easy-vqa test questions, focal significance, at keep={BUDGET}")
    for strategy in ("none", "rank", "random", "centre"):
        row = results[strategy]
        print(f"    {strategy:7s} {float(row['accuracy']):.1%} ({float(row['kept_tokens']):.0f} visual tokens)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a save_pretrained folder (model and processor)")
    parser.add_argument("--lightning", help="a stage=train lightning/<phase>/last.ckpt whose weights replace them")
    parser.add_argument("--images", type=int, default=1000, help="images of each split to probe (test: all 1,000)")
    parser.add_argument("--pruning", action="store_true", help="also run (c), the evaluation at keep=0.1")
    parser.add_argument("--limit", type=int, help="(c) on the first N test questions only (default: all)")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    model, processor = load(args.checkpoint, args.lightning)
    sides = {}
    for split, paths in (("train", easy_vqa.get_train_image_paths()), ("test", easy_vqa.get_test_image_paths())):
        labels = image_labels(split)
        chosen = sorted(labels)[: args.images]
        outputs = tower_outputs(model, processor, [paths[image] for image in chosen])
        sides[split] = (outputs, torch.tensor([labels[image] for image in chosen]))
    locality(*sides["train"], *sides["test"])
    attention_share(sides["test"][0])
    if args.pruning and args.lightning:
        with tempfile.TemporaryDirectory(prefix="fopru-weights-") as folder:
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
            pruning(folder, args.limit)
    elif args.pruning:
        pruning(args.checkpoint, args.limit)


if __name__ == "__main__":
    main()
