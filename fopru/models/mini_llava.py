"""The embedded mini LLaVA: a real ``LlavaForConditionalGeneration`` small enough to train on easy-VQA on a CPU.

A CLIP vision tower on easy-VQA's native 64 x 64 images (4 x 4 patches: a 16 x 16 grid plus [CLS]), LLaVA's
two-layer MLP projector and a small Llama, with a word-level tokenizer over the easy-VQA vocabulary. The trained
weights ship with the package (``embedded:mini_llava``) and load through the same ``from_pretrained`` path and the
same :class:`~fopru.models.llava.LlavaAdapter` as the llava-hf checkpoints; ``stage=train`` rebuilds them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import cast

import easy_vqa
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from fopru.models.llava import LlavaAdapter, llava_processor
from fopru.models.word_tokenizer import word_tokenizer
from fopru.prompts import SHORT_ANSWER

IMAGE_SIZE, PATCH_SIZE = 64, 4
#: Initial standard deviation of the word embeddings (Llama's default is 0.02). The projected visual tokens of the
#: trained model have norms around 13; words embedded at 0.02 (norm 0.2 at width 128) are drowned by them in the
#: residual stream from the first layer on, and the language model then cannot tell which colour or shape a question
#: names: it answers yes/no questions from their wording alone. At std 1 (norm ~11) it compares them with the image.
WORD_EMBEDDING_STD = 1.0
_WORD = re.compile(r"\w+|[^\w\s]")


def easyvqa_vocabulary(prompt_template: str) -> list[str]:
    """Every word of easy-VQA's questions and answers (both splits), its post-prompt and the prompt template."""
    texts = [prompt_template.replace("<image>", " ").format(text=""), SHORT_ANSWER]
    for get_questions in (easy_vqa.get_train_questions, easy_vqa.get_test_questions):
        questions, answers, _ = get_questions()
        texts += questions + answers
    return sorted({word for text in texts for word in _WORD.findall(text)})


def build_mini_llava(folder: Path, seed: int, prompt_template: str) -> None:
    """Save an untrained (seeded) mini LLaVA and its processor into ``folder``."""
    tokenizer = word_tokenizer(["<image>"], easyvqa_vocabulary(prompt_template))
    vision = CLIPVisionConfig(
        hidden_size=96,
        intermediate_size=384,
        num_hidden_layers=5,  # LLaVA reads hidden_states[-2]: 4 layers feed the language model
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=int(tokenizer.convert_tokens_to_ids("<image>")),  # type: ignore[arg-type]
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():  # word embeddings at the scale of the projected visual tokens (see WORD_EMBEDDING_STD)
        embeddings = cast(torch.nn.Embedding, model.get_input_embeddings())
        embeddings.weight.mul_(WORD_EMBEDDING_STD / text.initializer_range)
    model.save_pretrained(folder)
    llava_processor(tokenizer, IMAGE_SIZE, PATCH_SIZE).save_pretrained(folder)


class MiniLlavaAdapter(LlavaAdapter):
    """The embedded mini LLaVA (see the module docstring): a :class:`LlavaAdapter` that can also be trained."""

    def build_untrained(self, folder: Path, seed: int) -> None:
        """Save the seeded, untrained architecture and its processor into ``folder`` (``stage=train`` starts here)."""
        build_mini_llava(folder, seed, self.prompt_template)
