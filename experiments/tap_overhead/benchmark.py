"""Time the vision encoder at CLIP ViT-L/14-336 width: untapped SDPA vs tapped SDPA vs all-eager attention.

Random weights (no download). Each round runs the three variants once, in a shuffled order, on the same input.
Reported: median and minimum time per variant, and the median over rounds of each variant's time divided by the
untapped time of the same round (paired, so slow drifts of the machine cancel). Target: tap overhead <= 5%.

    python experiments/tap_overhead/benchmark.py                 # 24 layers, batch 1, 5 rounds
    python experiments/tap_overhead/benchmark.py --layers 8      # fewer layers on a small machine
    python experiments/tap_overhead/benchmark.py --device cuda --dtype float16 --batch 16 --rounds 30
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from collections.abc import Callable

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from fopru.models.tap import VisionAttentionTap
from fopru.significance import AttentionReduction


def encoder(layers: int, implementation: str, device: str, dtype: torch.dtype) -> CLIPVisionModel:
    config = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=layers,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        attn_implementation=implementation,
    )
    torch.manual_seed(0)
    return CLIPVisionModel(config).to(device=device, dtype=dtype).eval()


def timed(step: Callable[[], object], device: str) -> float:
    if device == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        stop.record()
        torch.cuda.synchronize()
        return float(start.elapsed_time(stop)) / 1000
    began = time.perf_counter()
    step()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    sdpa = encoder(args.layers, "sdpa", args.device, dtype)
    eager = encoder(args.layers, "eager", args.device, dtype)
    pixels = torch.randn(args.batch, 3, 336, 336, generator=torch.Generator().manual_seed(0)).to(args.device, dtype)
    # LLaVA-1.5 taps the layer that produces hidden_states[-2], i.e. layer index L - 2.
    tapped_attention = sdpa.encoder.layers[args.layers - 2].self_attn
    summaries = []

    def untapped() -> object:
        return sdpa(pixel_values=pixels)

    def tapped() -> object:
        with VisionAttentionTap(tapped_attention, AttentionReduction(), has_cls=True) as tap:
            output = sdpa(pixel_values=pixels)
        summaries.append(tap.summary())
        return output

    def all_eager() -> object:
        return eager(pixel_values=pixels, output_attentions=True)

    variants = {"untapped SDPA": untapped, "tapped SDPA (fopru)": tapped, "all-eager + output_attentions": all_eager}
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for step in variants.values():
                step()
        order = list(variants)
        shuffler = random.Random(0)
        for _ in range(args.rounds):
            shuffler.shuffle(order)
            for name in order:
                times[name].append(timed(variants[name], args.device))

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(
        f"CLIP ViT-L/14-336 width (hidden 1024, 16 heads, 577 tokens), {args.layers} layers, batch {args.batch}, "
        f"{args.dtype}, {args.device} ({device_name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{args.rounds} shuffled rounds after {args.warmup} warm-up"
    )
    base = times["untapped SDPA"]
    print("| variant | median s | min s | median of paired ratios |\n|---|---|---|---|")
    ratios = {}
    for name, values in times.items():
        ratios[name] = statistics.median(value / reference for value, reference in zip(values, base, strict=True))
        print(f"| {name} | {statistics.median(values):.4f} | {min(values):.4f} | {ratios[name]:.3f}x |")
    overhead = ratios["tapped SDPA (fopru)"] - 1
    print(f"tap overhead: {100 * overhead:+.2f}% of the untapped forward (target <= 5%)")


if __name__ == "__main__":
    main()
