"""Throughput and overhead of fopru's evaluation, each measured side by side against its reference in one run.

1. throughput: the evaluation loop at ``strategy=none`` (batched, vision cache cold at the start, truncated tower)
   against a plain batch-1 stock ``generate`` loop on the same questions (target >= 3x);
2. sweep: the default keep sweep (``keep=0.05,0.1,0.25,0.5,1.0``) with the vision cache against ``cache=off``, as
   prediction loops in this process (and, with ``--cli``, as two real ``train_eval.py -m`` sweeps) (target <= 0.6);
3. prefill: the pruned pipeline (tap, significance, selection, projector, prefill at keep 0.25) against the stock
   vision tower + projector + LLM prefill fed the same reduced token count (target within 5%), one question at a
   time and in batches of the evaluation's ``batch_size``;
4. tap: the tapped tower against the untapped one (``experiments/tap_overhead/benchmark.py``'s encoder; within 5%).

Every comparison alternates its two variants round by round (the machine is shared: absolute times drift, the
ratios of neighbouring rounds do not) and reports medians.

    python experiments/throughput/bench.py                      # CPU: the embedded model on easy-VQA
    python experiments/throughput/bench.py --cli                # also the two default sweeps through train_eval.py
    python experiments/throughput/bench.py --gpu                # LLaVA-1.5-7B-size random weights, float16, cuda,
                                                                # SDPA and flash_attention_2 (a few minutes)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fopru.components import CONFIG_DIR, load  # noqa: E402
from fopru.layout import Budget  # noqa: E402
from fopru.models.base import TargetModel  # noqa: E402
from fopru.models.tap import VisionAttentionTap  # noqa: E402
from fopru.models.vision_cache import VisionCache  # noqa: E402
from fopru.pipeline import PruningPipeline  # noqa: E402
from fopru.reorder.base import ReorderPolicy  # noqa: E402
from fopru.seeding import sample_key  # noqa: E402
from fopru.significance import AttentionReduction  # noqa: E402
from fopru.significance.base import SignificanceSource  # noqa: E402
from fopru.strategies import PruningStrategy  # noqa: E402

KEEPS = (0.05, 0.1, 0.25, 0.5, 1.0)


def pipeline(strategy: str, keep: float) -> PruningPipeline:
    """The default method (focal significance, original order) with ``strategy`` at ``keep``."""
    return PruningPipeline(
        significance=load("significance", "focal", SignificanceSource),
        strategy=load("strategy", strategy, PruningStrategy),
        reorder=load("reorder", "original", ReorderPolicy),
        budget=Budget(keep=keep),
    )


def clock(device: str) -> Callable[[], float]:
    def now() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    return now


# -- 1 and 2: the evaluation loop and the stock loop ---------------------------------------------------------------
def evaluation_pass(
    target: TargetModel, method: PruningPipeline, rows: Sequence[dict[str, Any]], batch: int, tokens: int
) -> list[str]:
    """What the evaluation step does per batch (prepare, generate, FLOPs), without Lightning around it."""
    texts: list[str] = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        prompts = [target.format_prompt(row["prompt"]) for row in chunk]
        inputs = target.prepare(
            [row["image"] for row in chunk], prompts, [sample_key(row["sample_id"]) for row in chunk]
        )
        generation = target.generate(inputs, method, max_new_tokens=tokens)
        target.flops(inputs, generation.inputs, method)
        texts += generation.texts
    return texts


def stock_pass(target: TargetModel, rows: Sequence[dict[str, Any]], tokens: int) -> list[str]:
    """A plain loop: the stock processor and ``generate`` (greedy), one question at a time."""
    texts = []
    tokenizer = target.processor.tokenizer
    for row in rows:
        inputs = target.processor(
            images=[row["image"]], text=[target.format_prompt(row["prompt"])], return_tensors="pt"
        ).to(target.device)
        with torch.no_grad():
            output = target.model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
        texts.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return texts


def throughput(target: TargetModel, rows: list[dict[str, Any]], batch: int, tokens: int, rounds: int) -> dict[str, Any]:
    now = clock(target.device)
    method = pipeline("none", 1.0)
    times: dict[str, list[float]] = {"fopru": [], "stock": []}
    agree = 0.0
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as folder:  # a cold cache per round: only this job's own reuse
            target.vision_cache = VisionCache(folder=folder)
            began = now()
            ours = evaluation_pass(target, method, rows, batch, tokens)
            times["fopru"].append(now() - began)
        target.vision_cache = None
        began = now()
        theirs = stock_pass(target, rows, tokens)
        times["stock"].append(now() - began)
        agree = sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(rows)
    ratios = [stock / ours for ours, stock in zip(times["fopru"], times["stock"], strict=True)]
    return {
        "questions": len(rows),
        "fopru_samples_per_s": len(rows) / statistics.median(times["fopru"]),
        "stock_samples_per_s": len(rows) / statistics.median(times["stock"]),
        "speedup_median": statistics.median(ratios),
        "speedups": ratios,
        "same_answers": agree,
    }


def sweep(target: TargetModel, rows: list[dict[str, Any]], batch: int, tokens: int, rounds: int) -> dict[str, Any]:
    """The keep sweep's prediction loops, one process, with one cache shared by its jobs against none."""
    now = clock(target.device)
    totals: dict[str, list[float]] = {"cache": [], "off": []}
    per_job: list[dict[str, float]] = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as folder:
            shared = VisionCache(folder=folder)
            spent = {"cache": 0.0, "off": 0.0}
            for keep in KEEPS:  # the two sweeps interleaved job by job
                job = {}
                for variant in ("cache", "off"):
                    target.vision_cache = shared if variant == "cache" else None
                    began = now()
                    evaluation_pass(target, pipeline("rank", keep), rows, batch, tokens)
                    job[variant] = now() - began
                    spent[variant] += job[variant]
                per_job.append({"keep": keep, **job})
            target.vision_cache = None
        for variant, seconds in spent.items():
            totals[variant].append(seconds)
    ratios = [cached / off for cached, off in zip(totals["cache"], totals["off"], strict=True)]
    return {
        "questions": len(rows),
        "seconds": totals,
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "per_job": per_job,
    }


def cli_sweeps(questions: int) -> dict[str, Any]:
    """The default sweep through ``train_eval.py -m`` twice, with the cache (cold) and with ``cache=off``."""
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for variant in ("off", "cache"):
            overrides = [
                f"data.limit={questions}",
                "logger=none",
                f"results_dir={folder}/results-{variant}",
                f"hydra.sweep.dir={folder}/sweep-{variant}",
                "cache=off" if variant == "off" else f"cache.folder={folder}/vision",
            ]
            began = time.perf_counter()
            subprocess.run(
                [sys.executable, str(ROOT / "train_eval.py"), "-m", *overrides],
                cwd=folder,
                check=True,
                capture_output=True,
            )
            seconds[variant] = time.perf_counter() - began
    return {"questions": questions, "seconds": seconds, "ratio": seconds["cache"] / seconds["off"]}


# -- 3: the pruned prefill against stock vision + stock prefill on the same count ----------------------------------
def prefill(
    target: TargetModel, rows: list[dict[str, Any]], keep: float, rounds: int, batch: int = 1
) -> dict[str, Any]:
    """The pruned prefill against the stock one, ``batch`` questions at a time (left-padded). The stock side runs
    the whole tower, the projector on the same number of visual tokens and the language model on those tokens
    followed by each prompt's text (its padding masked): the same token counts, so the same cost."""
    now = clock(target.device)
    method = pipeline("rank", keep)
    model = target.model
    feature_layer = model.config.vision_feature_layer
    ratios = []
    target.vision_cache = None
    with torch.no_grad():
        for _ in range(rounds):
            for start in range(0, len(rows) - batch + 1, batch):
                chunk = rows[start : start + batch]
                prepared = target.prepare(
                    [row["image"] for row in chunk], [target.format_prompt(row["prompt"]) for row in chunk]
                )
                began = now()
                inputs = target.prefill_inputs(prepared, method)
                target.language_forward(
                    inputs.position_ids, inputs.attention_mask, _cache(), inputs_embeds=inputs.inputs_embeds,
                    logits_to_keep=1,
                )  # fmt: skip
                ours = now() - began
                kept = int(inputs.visual_tokens[0])
                began = now()
                pixels = prepared["pixel_values"].to(target.device, target.dtype)
                hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[feature_layer]
                visual = model.model.multi_modal_projector(hidden[:, 1 : 1 + kept])
                text_rows = prepared["input_ids"] != model.config.image_token_id
                width = int(text_rows.sum(dim=1)[0])  # every row holds the same number of image tokens
                ids = prepared["input_ids"][text_rows].view(len(chunk), width)
                mask = prepared["attention_mask"][text_rows].view(len(chunk), width)
                embeds = torch.cat([visual, model.get_input_embeddings()(ids)], dim=1)
                mask = torch.cat([mask.new_ones((len(chunk), kept)), mask], dim=1)
                model(inputs_embeds=embeds, attention_mask=mask, use_cache=True, logits_to_keep=1)
                stock = now() - began
                ratios.append(ours / stock)
    return {
        "keep": keep,
        "batch": batch,
        "batches": len(ratios),
        "ratio_median": statistics.median(ratios),
    }


def _cache() -> Any:
    from transformers import DynamicCache

    return DynamicCache()


# -- 4: the tap ----------------------------------------------------------------------------------------------------
def tap_overhead_module() -> Any:
    path = ROOT / "experiments" / "tap_overhead" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("tap_overhead_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tap(tower: torch.nn.Module, layer: int, pixels: torch.Tensor, rounds: int, device: str) -> dict[str, Any]:
    now = clock(device)
    attention = tower.vision_model.encoder.layers[layer].self_attn if hasattr(tower, "vision_model") else None
    if attention is None:
        attention = tower.encoder.layers[layer].self_attn
    ratios = []
    with torch.inference_mode():
        tower(pixel_values=pixels)
        for _ in range(rounds):
            began = now()
            tower(pixel_values=pixels)
            untapped = now() - began
            began = now()
            with VisionAttentionTap(attention, AttentionReduction(), has_cls=True) as probe:
                tower(pixel_values=pixels)
            probe.summary()
            ratios.append((now() - began) / untapped)
    return {"rounds": rounds, "ratio_median": statistics.median(ratios)}


# -- GPU: LLaVA-1.5-7B-size random weights -------------------------------------------------------------------------
#: LLaVA-1.5-7B's shape (CLIP ViT-L/14-336, Vicuna-7B), and a small one that checks the GPU mode's code on a CPU.
SHAPES = {
    "7b": {"vision_width": 1024, "vision_mlp": 4096, "vision_layers": 24, "vision_heads": 16, "width": 4096,
           "mlp": 11008, "layers": 32, "heads": 32},
    "smoke": {"vision_width": 64, "vision_mlp": 128, "vision_layers": 3, "vision_heads": 4, "width": 64, "mlp": 128,
              "layers": 2, "heads": 4},
}  # fmt: skip


def random_llava_7b(attention: str, device: str, reference: TargetModel, shape: str = "7b") -> TargetModel:
    """A LlavaAdapter around LLaVA-1.5-7B's architecture with seeded random float16 weights (CLIP ViT-L/14-336,
    Vicuna-7B shape), the embedded model's word tokenizer and a 336 px CLIP processor (no download)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from fopru.models.llava import LlavaAdapter, llava_processor

    tokenizer = reference.processor.tokenizer
    size = SHAPES[shape]
    vision = CLIPVisionConfig(
        hidden_size=size["vision_width"], intermediate_size=size["vision_mlp"], num_hidden_layers=size["vision_layers"],
        num_attention_heads=size["vision_heads"], image_size=336, patch_size=14, projection_dim=768,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=32064, hidden_size=size["width"], intermediate_size=size["mlp"], num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"], num_key_value_heads=size["heads"], max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=reference.model.config.image_token_id,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )  # fmt: skip
    config._attn_implementation = attention
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(torch.float16).eval()
    adapter = LlavaAdapter("random:llava-1.5-7b", dtype="float16", attn_implementation="sdpa", device=device)
    adapter.attn_implementation = attention
    adapter._model = model
    adapter._processor = llava_processor(copy.deepcopy(tokenizer), 336, 14)
    adapter.fingerprint = lambda: "random:llava-1.5-7b:seed0"  # type: ignore[method-assign]
    return adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=200, help="easy-VQA test questions of checks 1 and 2")
    parser.add_argument(
        "--whole-images",
        action="store_true",
        help="checks 1 and 2 on every question of the first images of the test split (about 10 per image, as a "
        "full evaluation sees them) instead of the seeded draw of --questions questions",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the throughput and prefill comparisons")
    parser.add_argument("--sweep-rounds", type=int, default=1, help="rounds of the sweep (5 paired jobs each)")
    parser.add_argument("--cli", action="store_true", help="also time two default sweeps through train_eval.py")
    parser.add_argument("--cli-questions", type=int, default=1000)
    parser.add_argument("--gpu", action="store_true", help="LLaVA-1.5-7B-size random weights on cuda, float16")
    parser.add_argument("--smoke", action="store_true", help="the GPU mode's code on a small random model, on cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    root = OmegaConf.load(CONFIG_DIR / "train_eval.yaml")
    batch = int(root.batch_size)
    limit = None if args.whole_images else args.questions
    benchmark = instantiate(OmegaConf.load(CONFIG_DIR / "data" / "easyvqa.yaml"), limit=limit, seed=0)
    dataset = benchmark.load()
    rows = [dataset[index] for index in range(min(args.questions, len(dataset)))]
    tokens = benchmark.max_new_tokens
    embedded = instantiate(OmegaConf.load(CONFIG_DIR / "model" / "mini_llava.yaml")).load()
    figures: dict[str, Any] = {
        "machine": f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        "batch_size": batch,
        "max_new_tokens": tokens,
        "questions": "whole images" if args.whole_images else "seeded draw",
        "distinct_images": len({row["image_id"] for row in rows}),
    }
    if not args.gpu and not args.smoke:
        figures["throughput"] = throughput(embedded, rows, batch, tokens, args.rounds)
        print("throughput", json.dumps(figures["throughput"]), flush=True)
        figures["sweep"] = sweep(embedded, rows, batch, tokens, args.sweep_rounds)
        print("sweep", json.dumps(figures["sweep"]), flush=True)
        figures["prefill"] = prefill(embedded, rows[:40], 0.25, args.rounds)
        figures["prefill_batched"] = prefill(embedded, rows[: 40 * batch], 0.25, args.rounds, batch)
        print("prefill", json.dumps(figures["prefill"]), json.dumps(figures["prefill_batched"]), flush=True)
        tower = embedded.model.model.vision_tower
        pixels = embedded.prepare([rows[0]["image"]], [embedded.format_prompt("x")])["pixel_values"]
        figures["tap_mini"] = tap(tower, embedded.default_tap_layer(), pixels, 50, "cpu")
        module = tap_overhead_module()
        clip = module.encoder(8, "sdpa", "cpu", torch.float32)
        figures["tap_clip_l_8_layers"] = tap(clip, 6, torch.randn(1, 3, 336, 336), args.rounds * 3, "cpu")
        print("tap", json.dumps(figures["tap_mini"]), json.dumps(figures["tap_clip_l_8_layers"]), flush=True)
        if args.cli:
            figures["cli_sweeps"] = cli_sweeps(args.cli_questions)
            print("cli sweeps", json.dumps(figures["cli_sweeps"]), flush=True)
    else:
        device, shape = ("cpu", "smoke") if args.smoke else ("cuda", "7b")
        figures["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
        few = rows[: min(len(rows), 8 if args.smoke else 64)]
        for attention in ("sdpa", "flash_attention_2"):
            try:
                big = random_llava_7b(attention, device, embedded, shape)
            except (ImportError, ValueError) as error:  # flash-attn not installed, or not on this device
                figures[attention] = {"skipped": str(error)}
                print(attention, "skipped:", error, flush=True)
                continue
            figures[attention] = {
                "throughput": throughput(big, few, 16, tokens, 2),
                "sweep": sweep(big, few, 16, tokens, 1),
                "prefill": prefill(big, few[:16], 0.25, 2),
                "prefill_batched": prefill(big, few, 0.25, 2, 8),
            }
            layers = SHAPES[shape]["vision_layers"]
            dtype, images = (torch.float32, 1) if args.smoke else (torch.float16, 16)
            clip = tap_overhead_module().encoder(layers, attention, device, dtype)
            pixels = torch.randn(images, 3, 336, 336, device=device, dtype=dtype)
            figures[attention]["tap"] = tap(clip, layers - 2, pixels, 20, device)
            print(attention, json.dumps(figures[attention]), flush=True)
            del big
            torch.cuda.empty_cache()
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
