"""DiT: parameter counts and multiply-adds against the paper, adaLN-Zero, patch/position layout, determinism.

Only the tiny configs run forward or backward; the paper-sized ones are built on the meta device (no memory).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rsgeo_prune.train.dit import (
    DIT_CONFIGS,
    DiT,
    build_dit,
    count_parameters,
    dit_flops,
    dit_num_params,
    patchify,
    sincos_pos_embed_2d,
    timestep_sinusoid,
    unpatchify,
)

torch.set_num_threads(1)

PAPER_NAMES = [f"DiT-{s}/{p}" for s in ("S", "B", "L", "XL") for p in (2, 4, 8)]

# Peebles & Xie 2023 (class-conditional ImageNet models, which learn Σ: 8 output channels, 1001 label rows;
# the official code also counts the frozen position embedding, a Parameter there).
PAPER_PARAMS = {"DiT-S/2": 33.0e6, "DiT-B/2": 130.5e6, "DiT-L/2": 458.1e6, "DiT-XL/2": 675.13e6}
PAPER_XL2_EXACT = 675_129_632  # the official training log
# Table 4 "Gflops" (fvcore counts multiply-adds) at 256 px = 32x32x4 latents
PAPER_GMACS = {"DiT-S/2": 6.06, "DiT-B/2": 23.01, "DiT-L/2": 80.71, "DiT-XL/2": 118.64}


def _expected_params(name: str, *, num_classes: int | None, in_channels: int = 4) -> int:
    """Parameter count summed layer by layer, independently of the module's closed form."""
    cfg = DIT_CONFIGS[name]
    d, p, c = cfg.hidden_size, cfg.patch_size, in_channels

    def linear(i, o):
        return i * o + o

    block = linear(d, 3 * d) + linear(d, d) + linear(d, 4 * d) + linear(4 * d, d) + linear(d, 6 * d)
    n = cfg.depth * block
    n += (c * p * p) * d + d  # patch conv
    n += linear(256, d) + linear(d, d)  # timestep MLP
    n += linear(d, 2 * d) + linear(d, p * p * c)  # final layer
    if num_classes is not None:
        n += (num_classes + 1) * d
    return n


def test_registry_has_every_paper_config_and_tiny():
    assert set(PAPER_NAMES) <= set(DIT_CONFIGS)
    assert {"DiT-tiny/2", "DiT-tiny/4"} <= set(DIT_CONFIGS)
    xl = DIT_CONFIGS["DiT-XL/2"]
    assert (xl.depth, xl.hidden_size, xl.num_heads, xl.patch_size) == (28, 1152, 16, 2)
    with pytest.raises(ValueError, match="unknown DiT config"):
        build_dit("DiT-XXL/2", device="meta")


@pytest.mark.parametrize("name", sorted(DIT_CONFIGS))
def test_parameter_counts_on_meta(name):
    cond = build_dit(name, num_classes=1000, device="meta")
    uncond = build_dit(name, device="meta")
    assert all(p.is_meta for p in cond.parameters())
    assert count_parameters(cond) == _expected_params(name, num_classes=1000) == dit_num_params(name, num_classes=1000)
    assert count_parameters(uncond) == _expected_params(name, num_classes=None) == dit_num_params(name)
    # unconditional = conditional minus the 1001-row label table, nothing else
    assert count_parameters(cond) - count_parameters(uncond) == 1001 * DIT_CONFIGS[name].hidden_size
    if name in PAPER_PARAMS:
        assert count_parameters(cond) == pytest.approx(PAPER_PARAMS[name], rel=0.01)


def test_xl2_count_reconciles_exactly_with_the_official_log():
    """Ours + the frozen position table + the learned-Σ half of the output layer = 675,129,632."""
    model = build_dit("DiT-XL/2", num_classes=1000, device="meta")
    d, p, c, tokens = 1152, 2, 4, 256
    learned_sigma_outputs = d * p * p * c + p * p * c  # the 4 extra output channels of a Σ-learning model
    assert count_parameters(model) + tokens * d + learned_sigma_outputs == PAPER_XL2_EXACT


def test_unconditional_xl2_count():
    n = count_parameters(build_dit("DiT-XL/2", device="meta"))
    assert n == 673_663_120
    assert n == pytest.approx(673.7e6, abs=0.05e6)  # the notes' figure


@pytest.mark.parametrize("name", ["DiT-tiny/2", "DiT-S/2", "DiT-XL/2", "DiT-B/8"])
def test_dit_flops_matches_torch_flop_counter(name):
    """The closed form equals torch's FlopCounterMode (2 FLOPs per multiply-add) on a meta forward pass."""
    model = build_dit(name, device="meta")
    x = torch.empty(3, 4, 32, 32, device="meta")
    t = torch.empty(3, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(x, t)
    assert counter.get_total_flops() == 3 * dit_flops(name, unit="flops") == 3 * 2 * dit_flops(name)


@pytest.mark.parametrize("name", sorted(PAPER_GMACS))
def test_dit_flops_matches_paper_table(name):
    # the paper's models output 8 channels (learned Σ) and count norms: ours is a little lower, within 0.5 %
    assert dit_flops(name) / 1e9 == pytest.approx(PAPER_GMACS[name], rel=0.005)
    with pytest.raises(ValueError, match="unit"):
        dit_flops(name, unit="tflops")


def test_output_is_exactly_zero_at_init_and_has_input_shape():
    torch.manual_seed(0)
    model = build_dit("DiT-tiny/2", input_size=8)
    x = torch.randn(3, 4, 8, 8)
    out = model(x, torch.tensor([0.0, 500.0, 999.0]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0
    assert model.out_channels == model.in_channels == 4
    # adaLN-Zero: every modulation Linear and the output Linear start at zero
    for block in model.blocks:
        assert torch.count_nonzero(block.adaLN_modulation[-1].weight) == 0
    assert torch.count_nonzero(model.final_layer.linear.weight) == 0
    # the other Linears and the patch conv are not zero (xavier)
    assert model.blocks[0].attn.qkv.weight.abs().sum() > 0 and model.x_embedder.weight.abs().sum() > 0


def test_class_conditional_tiny_is_zero_at_init_and_accepts_missing_labels():
    torch.manual_seed(0)
    model = build_dit("DiT-tiny/4", input_size=8, num_classes=10)
    assert model.y_embedder.num_embeddings == 11  # 10 classes + the "no label" row
    x = torch.randn(2, 4, 8, 8)
    assert torch.count_nonzero(model(x, torch.tensor([3.0, 7.0]), torch.tensor([1, 9]))) == 0
    assert model(x, torch.tensor(5.0)).shape == x.shape  # 0-d t broadcast, y=None → null label


def test_patchify_unpatchify_round_trip():
    x = torch.randn(2, 4, 8, 12)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 4 * 6, 2 * 2 * 4)
    assert torch.equal(unpatchify(tokens, 2, 4, 8, 12), x)
    # token k = row·(W/p) + col holds that patch, laid out (p, p, C)
    assert torch.equal(tokens[1, 1 * 6 + 3].reshape(2, 2, 4), x[1, :, 2:4, 6:8].permute(1, 2, 0))


def test_patch_conv_is_a_linear_on_patchified_tokens():
    """The conv embedding equals a Linear on patchify(x) with its kernel laid out (p, p, C): the same order."""
    torch.manual_seed(0)
    model = build_dit("DiT-tiny/2", input_size=8)
    x = torch.randn(2, 4, 8, 8)
    conv = model.x_embedder(x).flatten(2).transpose(1, 2)  # (N, T, D)
    w = model.x_embedder.weight.permute(0, 2, 3, 1).reshape(64, -1)  # (D, p·p·C)
    torch.testing.assert_close(conv, patchify(x, 2) @ w.T + model.x_embedder.bias)


def test_position_embedding_is_a_fixed_buffer():
    model = build_dit("DiT-tiny/2", input_size=16)
    assert model.pos_embed.shape == (1, 64, 64)  # (1, T = (16/2)², D)
    assert "pos_embed" not in dict(model.named_parameters())
    assert "pos_embed" not in model.state_dict()  # a function of the config: not stored in checkpoints
    emb = sincos_pos_embed_2d(64, 8)
    assert torch.equal(model.pos_embed[0], emb)
    # token 0 sits at (0, 0): sin half 0, cos half 1, for the row code and the column code
    assert torch.equal(emb[0], torch.tensor(([0.0] * 16 + [1.0] * 16) * 2))
    assert torch.unique(emb, dim=0).shape[0] == 64  # every position is distinct
    # tokens in one row share the row half; tokens in one column share the column half
    assert torch.equal(emb[8 * 2, :32], emb[8 * 2 + 5, :32]) and torch.equal(emb[3, 32:], emb[8 * 4 + 3, 32:])
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(66, 4)


def test_meta_model_materialises_with_to_empty_and_initialize_weights():
    reference = build_dit("DiT-tiny/2", input_size=8)
    torch.manual_seed(0)
    reference.initialize_weights()  # construction itself draws (nn.Linear's default init): reseed, redo
    model = build_dit("DiT-tiny/2", input_size=8, device="meta").to_empty(device="cpu")
    torch.manual_seed(0)
    model.initialize_weights()
    assert torch.equal(model.pos_embed, reference.pos_embed)
    for (name, a), (_, b) in zip(reference.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name


def test_timestep_sinusoid_shape_and_values():
    emb = timestep_sinusoid(torch.tensor([0.0, 1.0, 999.0]))
    assert emb.shape == (3, 256)
    assert torch.equal(emb[0], torch.tensor([1.0] * 128 + [0.0] * 128))
    assert not torch.allclose(emb[1], emb[2])


def _random_adaln(model: DiT, seed: int) -> DiT:
    """Give the zero-initialised layers seeded random values so outputs (and gradients) are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN" in name or "final_layer.linear" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def test_fp32_forward_is_deterministic_for_a_seed():
    def make():
        torch.manual_seed(1)
        return _random_adaln(build_dit("DiT-tiny/2", input_size=8), seed=2)

    a, b = make(), make()
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([1.0, 10.0, 100.0, 900.0])
    out = a(x, t)
    assert torch.count_nonzero(out) > 0
    assert torch.equal(out, a(x, t))
    assert torch.equal(out, b(x, t))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = _random_adaln(build_dit("DiT-tiny/2", input_size=8), seed=4)
    ckpt = build_dit("DiT-tiny/2", input_size=8, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([3.0, 700.0])
    for model in (plain, ckpt):
        model.train()
        model(x, t).square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_forward_traces_as_one_graph():
    """No graph breaks: dynamo captures the whole forward (eager backend: tracing only, no code generation)."""
    torch.manual_seed(0)
    model = _random_adaln(build_dit("DiT-tiny/2", input_size=8, num_classes=3), seed=6)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([5.0, 50.0])
    torch.testing.assert_close(compiled(x, t), model(x, t))
    torch.testing.assert_close(compiled(x, t, torch.tensor([0, 2])), model(x, t, torch.tensor([0, 2])))


def test_input_size_must_be_divisible_by_patch():
    with pytest.raises(ValueError, match="divisible"):
        build_dit("DiT-tiny/4", input_size=10)
