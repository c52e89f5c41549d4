"""The vision tap against eager attention on tiny CLIP and SigLIP encoders (random weights, no download)."""

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from fopru.models.tap import VisionAttentionTap
from fopru.significance import AttentionReduction, summarize_attention

ENCODERS = {
    "clip": (CLIPVisionConfig, CLIPVisionModel, True),
    "siglip": (SiglipVisionConfig, SiglipVisionModel, False),
}


def tiny_encoder(family: str, implementation: str = "sdpa") -> torch.nn.Module:
    config_class, model_class, _ = ENCODERS[family]
    torch.manual_seed(0)
    config = config_class(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=48,
        patch_size=8,  # 6 x 6 patches
        attn_implementation=implementation,
    )
    return model_class(config).eval()


def pixels(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 48, 48, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", sorted(ENCODERS))
@pytest.mark.parametrize("layer", [0, 2, -1])
@pytest.mark.parametrize("cls_drop", ["after_softmax", "before_softmax"])
def test_tapped_summary_equals_eager_attention(family: str, layer: int, cls_drop: str) -> None:
    has_cls = ENCODERS[family][2]
    reduction = AttentionReduction(cls_drop=cls_drop)  # type: ignore[arg-type]
    model = tiny_encoder(family)
    with torch.no_grad(), VisionAttentionTap(model.encoder.layers[layer].self_attn, reduction, has_cls) as tap:
        model(pixel_values=pixels())
    tapped = tap.summary()
    eager = tiny_encoder(family, "eager")
    with torch.no_grad():
        attentions = eager(pixel_values=pixels(), output_attentions=True).attentions
    expected = summarize_attention(attentions[layer], has_cls, reduction)
    torch.testing.assert_close(tapped.received, expected.received)
    torch.testing.assert_close(tapped.paid, expected.paid)
    if has_cls:
        torch.testing.assert_close(tapped.cls, expected.cls)
    else:
        assert tapped.cls is None


@pytest.mark.parametrize("family", sorted(ENCODERS))
def test_the_tap_leaves_every_hidden_state_unchanged(family: str) -> None:
    model = tiny_encoder(family)
    with torch.no_grad():
        plain = model(pixel_values=pixels(), output_hidden_states=True).hidden_states
        attention = model.encoder.layers[2].self_attn
        with VisionAttentionTap(attention, AttentionReduction(), ENCODERS[family][2]):
            tapped = model(pixel_values=pixels(), output_hidden_states=True).hidden_states
    for before, after in zip(plain, tapped, strict=True):
        assert torch.equal(before, after)


def test_only_the_tapped_layer_changes_kernel_and_it_is_restored() -> None:
    model = tiny_encoder("clip")
    layers = model.encoder.layers
    with VisionAttentionTap(layers[1].self_attn, AttentionReduction(), True):
        kernels = [layer.self_attn.config._attn_implementation for layer in layers]
        assert kernels == ["sdpa", "fopru_tap", "sdpa", "sdpa"]
    assert [layer.self_attn.config._attn_implementation for layer in layers] == ["sdpa"] * 4
    assert all(layer.self_attn.config is model.config for layer in layers)


def test_logits_mode_matches_a_manual_recomputation() -> None:
    model = tiny_encoder("clip")
    attention = model.encoder.layers[1].self_attn
    captured: dict[str, torch.Tensor] = {}
    hook = attention.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(hidden=kwargs.get("hidden_states", args[0] if args else None)),
        with_kwargs=True,
    )
    with torch.no_grad(), VisionAttentionTap(attention, AttentionReduction(scores="logits"), True) as tap:
        model(pixel_values=pixels())
    hook.remove()
    hidden = captured["hidden"]
    heads, dim = 4, 16
    query = attention.q_proj(hidden).view(2, -1, heads, dim).transpose(1, 2)
    key = attention.k_proj(hidden).view(2, -1, heads, dim).transpose(1, 2)
    logits = (query @ key.transpose(-1, -2) * dim**-0.5).mean(1)[:, 1:, 1:]
    torch.testing.assert_close(tap.summary().received, logits.mean(1).detach())
    torch.testing.assert_close(tap.summary().paid, logits.mean(2).detach())


def test_summary_before_any_call_is_an_error() -> None:
    model = tiny_encoder("clip")
    with VisionAttentionTap(model.encoder.layers[0].self_attn, AttentionReduction(), True) as tap:
        pass
    with pytest.raises(RuntimeError, match="did not run"):
        tap.summary()


def test_the_joint_cls_row_and_keys_are_what_prumerge_and_visionzip_read() -> None:
    # LLaVA-PruMerge's released code hooks the last layer's q_proj and k_proj outputs (full width C) and takes
    # softmax(q k^T / sqrt(C))[0, 1:]; its similarity reads k_proj's patch rows. VisionZip's released code averages
    # the raw keys over heads. The tap's summary must hold exactly those.
    model = tiny_encoder("clip")
    attention = model.encoder.layers[-1].self_attn
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        attention.q_proj.register_forward_hook(lambda module, args, output: outputs.__setitem__("q", output)),
        attention.k_proj.register_forward_hook(lambda module, args, output: outputs.__setitem__("k", output)),
    ]
    with torch.no_grad(), VisionAttentionTap(attention, AttentionReduction(), has_cls=True) as tap:
        model(pixel_values=pixels())
    for hook in hooks:
        hook.remove()
    summary = tap.summary()
    query, key = outputs["q"], outputs["k"]
    released = torch.softmax(query @ key.transpose(1, 2) * query.shape[-1] ** -0.5, dim=-1)[:, 0, 1:]
    assert summary.cls_joint is not None and summary.keys is not None
    torch.testing.assert_close(summary.cls_joint, released)
    torch.testing.assert_close(summary.keys, key[:, 1:])
    assert summary.key_heads == 4
    head_mean = summary.head_mean_keys()
    assert head_mean is not None
    torch.testing.assert_close(head_mean, key[:, 1:].view(2, 36, 4, 16).mean(dim=2))
