"""The yes/no comparison without images: how fast does the mini LLaVA's language model (same Llama config, trained
from scratch) learn to answer easy-VQA's yes/no questions when the image's colour and shape are given as text?

Each sequence is ``USER: <colour> <shape>\\n<question><post-prompt> ASSISTANT:`` and the loss is the cross-entropy of
the answer (``yes`` / ``no``) at the last position; batches of 64, AdamW (betas 0.9 / 0.95, weight decay 0.01) at a
constant learning rate. Test: the first 2,000 yes/no questions of the test split (images whose colour and shape are
known from their open questions), with their own image's caption.

    python experiments/training/text_comparison.py [--layers 3] [--lr 1e-3] [--steps 1000]
        [--data real|balanced] [--positive-first K] [--question-probe] [--no-post-prompt] [--positive-only]

``--data real`` samples the training split's questions (lopsided by wording: the prior answers 82.6% of the test
questions); ``balanced`` draws a random caption, a random question template and a question word that matches the
caption half of the time. ``--positive-first K``: the first K steps draw only templates without "not"/"no".
``--question-probe``: a linear yes/no head on the output of layer 2 at the question mark, trained with weight 1 (so
the comparison can be supervised next to the question word instead of after the 12-token post-prompt).
"""

from __future__ import annotations

import argparse
import random
import re
import time
from collections import defaultdict
from pathlib import Path

import easy_vqa
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlavaProcessor

from fopru.prompts import SHORT_ANSWER

COLOURS = ["red", "green", "blue", "black", "gray", "teal", "brown", "yellow"]
SHAPES = ["circle", "rectangle", "triangle"]
CHECKPOINT = Path(__file__).resolve().parents[2] / "fopru" / "checkpoints" / "mini_llava"
Item = tuple[str, str, dict[str, str]]


def facts(split: object) -> list[Item]:
    """(question, answer, {"c": colour, "s": shape}) of each yes/no question whose image's colour and shape are
    known from its open questions."""
    questions, answers, images = split()  # type: ignore[operator]
    known: dict[int, dict[str, str]] = defaultdict(dict)
    for answer, image in zip(answers, images, strict=True):
        if answer in COLOURS:
            known[image]["c"] = answer
        if answer in SHAPES:
            known[image]["s"] = answer
    return [
        (question, answer, known[image])
        for question, answer, image in zip(questions, answers, images, strict=True)
        if answer in ("yes", "no") and "c" in known[image] and "s" in known[image]
    ]


def negated(template: str) -> bool:
    return " not " in template or " no " in template


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--data", choices=("real", "balanced"), default="balanced")
    parser.add_argument("--positive-first", type=int, default=0, metavar="K")
    parser.add_argument("--positive-only", action="store_true")
    parser.add_argument("--question-probe", action="store_true")
    parser.add_argument("--no-post-prompt", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    torch.set_num_threads(1)
    tokenizer = LlavaProcessor.from_pretrained(CHECKPOINT).tokenizer
    train, test = facts(easy_vqa.get_train_questions), facts(easy_vqa.get_test_questions)
    suffix = "" if args.no_post_prompt else SHORT_ANSWER

    def encode(items: list[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        texts = [f"USER: {f['c']} {f['s']}\n{question}{suffix} ASSISTANT:" for question, _, f in items]
        ids = [tokenizer(text, add_special_tokens=True).input_ids for text in texts]
        length = max(map(len, ids))
        tokens = torch.full((len(ids), length), tokenizer.pad_token_id)
        mask = torch.zeros_like(tokens)
        for row, sequence in enumerate(ids):  # left padding, as the evaluation batches prompts
            tokens[row, length - len(sequence) :] = torch.tensor(sequence)
            mask[row, length - len(sequence) :] = 1
        return tokens, mask, torch.tensor(tokenizer.convert_tokens_to_ids([answer for _, answer, _ in items]))

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    question_mark, yes = tokenizer.convert_tokens_to_ids(["?", "yes"])
    head = torch.nn.Linear(config.hidden_size, 2)
    optimizer = torch.optim.AdamW(
        list(model.parameters()) + list(head.parameters()), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01
    )
    test_tokens, test_mask, test_answers = encode(test[:2000])
    templates = sorted({re.sub(r"\b(" + "|".join(COLOURS + SHAPES) + r")\b", "<X>", q) for q, _, _ in train})

    def balanced(count: int, step: int) -> list[Item]:
        positive = args.positive_only or step <= args.positive_first
        pool = [t for t in templates if not negated(t)] if positive else templates
        items = []
        for _ in range(count):
            template = random.choice(pool)
            caption = {"c": random.choice(COLOURS), "s": random.choice(SHAPES)}
            key, words = ("c", COLOURS) if " shape" in template else ("s", SHAPES)
            word = caption[key] if random.random() < 0.5 else random.choice([w for w in words if w != caption[key]])
            answer = "yes" if (word == caption[key]) != negated(template) else "no"
            items.append((template.replace("<X>", word), answer, caption))
        return items

    start = time.time()
    for step in range(1, args.steps + 1):
        tokens, mask, answers = encode(balanced(64, step) if args.data == "balanced" else random.sample(train, 64))
        output = model(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
            output_hidden_states=True,
        )
        loss = torch.nn.functional.cross_entropy(output.logits[:, -1], answers)
        if args.question_probe:
            at = (tokens == question_mark).int().cumsum(-1).argmax(-1)  # each row's first "?"
            hidden = output.hidden_states[2][torch.arange(len(tokens)), at]
            loss = loss + torch.nn.functional.cross_entropy(head(hidden), (answers == yes).long())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            with torch.no_grad():
                logits = model(
                    input_ids=test_tokens,
                    attention_mask=test_mask,
                    position_ids=(test_mask.cumsum(-1) - 1).clamp_min(0),
                ).logits[:, -1]
            accuracy = (logits.argmax(-1) == test_answers).float().mean()
            print(f"{step} loss {loss.item():.3f} test {accuracy:.3f} {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
