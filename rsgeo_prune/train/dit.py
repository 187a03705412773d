"""Diffusion Transformer (DiT) for 4-channel latents, written from Peebles & Xie 2023.

"Scalable Diffusion Models with Transformers" (arXiv:2212.09748), the backbone of the RS-Prune paper (§4.2:
unconditional DiT-XL/2 on 32x32x4 latents of 256-px tiles). Written from the paper and
``shared/TRAINING-NOTES.md``; the official code is CC-BY-NC and was not consulted.

Data flow (N images, C latent channels, H = W = ``input_size``, patch p, T = (H/p)² tokens, width D)::

    x (N, C, H, W) ──patch conv (k = s = p)──► (N, T, D) + fixed 2-D sin-cos position embedding
    t (N,)  ──256-d sinusoid──► MLP ──► c (N, D)          [+ learned class embedding when num_classes]
    depth × DiTBlock(x, c): adaLN-Zero around self-attention and around an MLP (ratio 4, GELU-tanh)
    FinalLayer(x, c): adaLN (shift, scale) + Linear(D, p·p·C_out) ──► (N, T, p·p·C_out)
    unpatchify ──► (N, C_out, H, W)

Choices, each with its reason:

* ``C_out = C_in``: the model predicts only the noise (DDPM) or the velocity (rectified flow), with a fixed
  variance schedule. The paper also learns Σ (C_out = 2·C_in, hybrid loss); the notes judge the fixed-variance
  model simpler and sufficient here, and it keeps the flow objective and the DDPM objective on one backbone.
* adaLN-Zero: every block's modulation Linear and the final layer's modulation and output Linears start at zero,
  so each block is the identity and the network outputs exactly 0 at initialisation (the paper's best variant).
  Other Linears and the patch conv are xavier-uniform with zero bias (the paper's "standard ViT initialisation";
  the conv is initialised as the Linear it is, on its flattened (D, C·p·p) weight).
* The position embedding is a non-persistent buffer: it is a pure function of (grid, D), so it never trains, never
  enters the optimiser or the parameter count, and is not duplicated in checkpoints. After
  ``to_empty()`` (meta-device construction) call :meth:`DiT.initialize_weights` to fill it and the weights.
* With ``num_classes`` the class embedding has ``num_classes + 1`` rows: the extra row is the "no label" token that
  classifier-free guidance drops labels to. That is what the paper's parameter counts include (its XL/2 675.13 M).
* The forward pass has no data-dependent Python control flow (only ``None`` checks and the training flag), so
  ``torch.compile(fullgraph=True)`` traces it in one graph; attention is the fused
  ``torch.nn.functional.scaled_dot_product_attention``.

Departures from the paper (each deliberate; the architecture, widths, depths, patch sizes and adaLN-Zero are the
paper's, so the parameter counts match the paper's):

* **Fixed variance**: ``C_out = C_in`` and the simple loss only, no learned Σ and no hybrid ``L_vlb`` term (above).
* **Rectified flow**: the same backbone also trains on velocity targets (:mod:`.diffusion`); the paper is DDPM only.
* **Timestep-MLP initialisation**: its two Linears are xavier-uniform like every other Linear, as "standard ViT
  initialisation" reads; the paper does not single them out (its public reference code draws them from
  N(0, 0.02²) instead). Both keep the network's output exactly 0 at initialisation, since the final layer is zero.
* **Label embedding** (when ``num_classes``): N(0, 0.02²), ViT's embedding initialisation, plus the extra
  "no label" row.
* **Unconditional by default** (``num_classes=None``): RS-Prune trains without labels, so ``c`` is the timestep
  embedding alone; the paper's ImageNet models are class-conditional.
* **Training recipe** (in :mod:`.trainer`, not here): EMA decay warms up as ``min(0.9999, (1 + s)/(10 + s))``
  where the paper uses 0.9999 from the first step (a short run then has a usable EMA); gradient-norm clipping
  at 1.0 by default (the paper mentions none); bf16 autocast on GPUs; no horizontal flips (the paper's only
  augmentation): the latents are encoded once, ahead of training. AdamW at 1e-4, no weight decay and a global
  batch of 256 are the paper's.

Parameter counts and multiply-adds for every config are in :data:`DIT_CONFIGS`, :func:`dit_num_params` and
:func:`dit_flops`; tests check them against the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "DIT_ARGS",
    "DIT_CONFIGS",
    "DiT",
    "DiTBlock",
    "DiTConfig",
    "FinalLayer",
    "TimestepEmbedder",
    "build_dit",
    "count_parameters",
    "dit_flops",
    "dit_num_params",
    "patchify",
    "sincos_pos_embed_2d",
    "timestep_sinusoid",
    "unpatchify",
]


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiTConfig:
    """Architecture of one named DiT: ``depth`` blocks of width ``hidden_size`` with ``num_heads`` heads."""

    depth: int
    hidden_size: int
    num_heads: int
    patch_size: int
    mlp_ratio: float = 4.0


# (depth, width, heads) from the paper's Table 1; "tiny" is ours, for tests and CPU smoke runs.
_SIZES = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}

#: Every named config, e.g. ``"DiT-XL/2"``. A CLI uses ``choices=sorted(DIT_CONFIGS)``.
DIT_CONFIGS: dict[str, DiTConfig] = {
    f"DiT-{size}/{p}": DiTConfig(depth=d, hidden_size=w, num_heads=h, patch_size=p)
    for size, (d, w, h) in _SIZES.items()
    for p in (2, 4, 8)
}
DIT_CONFIGS["DiT-tiny/2"] = DiTConfig(depth=2, hidden_size=64, num_heads=4, patch_size=2)
DIT_CONFIGS["DiT-tiny/4"] = DiTConfig(depth=2, hidden_size=64, num_heads=4, patch_size=4)


def _config(name: str) -> DiTConfig:
    try:
        return DIT_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown DiT config {name!r}; choose one of {sorted(DIT_CONFIGS)}") from None


# ---------------------------------------------------------------------------------------------------------------
# Fixed embeddings and patch reshapes
# ---------------------------------------------------------------------------------------------------------------
def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(L,) positions → (L, dim) as [sin(pos·ω), cos(pos·ω)], ω_k = 10000^(-k/(dim/2)), k < dim/2."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2)
    omega = 1.0 / 10000**omega  # (dim/2,) frequencies from 1 down to ~1e-4
    args = pos.to(torch.float64)[:, None] * omega[None, :]  # (L, dim/2)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (L, dim)


def sincos_pos_embed_2d(dim: int, grid_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, (grid_size², dim), float32, tokens in row-major order.

    The first half of the channels encodes the row, the second half the column (each a 1-D sin-cos code of
    dim/2 channels), so ``dim`` must be divisible by 4. Computed in float64, then cast.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64, device=device)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (g, g) each; token k = row·g + col
    emb = torch.cat([_sincos_1d(dim // 2, rows.reshape(-1)), _sincos_1d(dim // 2, cols.reshape(-1))], dim=1)
    return emb.to(torch.float32)  # (g², dim)


def timestep_sinusoid(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) float timesteps → (N, dim) transformer-style sinusoid [cos(t·ω), sin(t·ω)].

    Frequencies ω_k = max_period^(-k/(dim/2)); t is expected on the 0..1000 scale (DDPM index, or 1000·t for
    flow), where the lowest frequency still separates neighbouring steps. ``dim`` must be even.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None, :]  # (N, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, dim)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) → (N, T, p·p·C) with T = (H/p)·(W/p), tokens row-major, each token laid out (p, p, C)."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // p, p, w // p, p)  # (N, C, h, p, w, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (N, h, w, p, p, C)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (N, T, p·p·C) → (N, C, H, W)."""
    n = x.shape[0]
    h, w = height // p, width // p
    x = x.reshape(n, h, w, p, p, channels)  # (N, h, w, p, p, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (N, C, h, p, w, p)
    return x.reshape(n, channels, height, width)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (N, T, D), shift/scale (N, D) → x·(1 + scale) + shift; "1 +" makes zero-init the identity."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


# ---------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------
class TimestepEmbedder(nn.Module):
    """t (N,) → c (N, D): 256-d sinusoid, then Linear → SiLU → Linear."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # the MLP runs in the weights' dtype (bf16 under a cast model); the sinusoid itself is built in fp32
        return self.mlp(timestep_sinusoid(t, self.frequency_dim).to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Multi-head self-attention on (N, T, D) with one fused qkv projection and fused SDPA."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads)  # (N, T, 3, H, D/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (N, H, T, D/H)
        x = F.scaled_dot_product_attention(q, k, v)  # (N, H, T, D/H); softmax(qkᵀ/√(D/H))·v
        return self.proj(x.transpose(1, 2).reshape(n, t, d))  # (N, T, D)


class Mlp(nn.Module):
    """Linear(D, rD) → GELU(tanh) → Linear(rD, D)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block: x + gate·f(modulate(LN(x), shift, scale)) for f = attention, then MLP.

    x (N, T, D), c (N, D) → (N, T, D). The six modulation vectors come from SiLU → Linear(D, 6D) on c; the
    Linear is zero-initialised, so gates start at 0 and the block starts as the identity.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        # LayerNorm without affine: scale and shift come from the conditioning instead
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)  # 6 × (N, D)
        x = x + gate_a[:, None, :] * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_m[:, None, :] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    """x (N, T, D), c (N, D) → (N, T, p·p·C_out): adaLN (shift, scale; no gate) then a zero-init Linear."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """Diffusion Transformer: ``model(x_t, t) -> prediction`` with the input's shape.

    Args:
        input_size: latent height = width H (32 for 256-px tiles through an 8x VAE).
        patch_size: p; H must be divisible by p. Tokens T = (H/p)².
        in_channels: latent channels C; the output has the same C (noise or velocity, fixed variance).
        hidden_size, depth, num_heads, mlp_ratio: the transformer (see :data:`DIT_CONFIGS`).
        num_classes: ``None`` (default) for the unconditional model the project trains; an int adds a learned
            class embedding of ``num_classes + 1`` rows (the last is "no label").
        grad_checkpointing: recompute each block in the backward pass (saves activation memory while training).

    Forward: x (N, C, H, W), t (N,) or () float on the 0..1000 scale, y (N,) long or ``None`` → (N, C, H, W).
    """

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels  # fixed variance: predict ε (DDPM) or v (flow), nothing else
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.num_classes = num_classes
        self.grad_checkpointing = grad_checkpointing
        self.grid_size = input_size // patch_size
        self.num_tokens = self.grid_size**2

        # a conv with kernel = stride = p is a Linear on each non-overlapping p×p×C patch
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = nn.Embedding(num_classes + 1, hidden_size) if num_classes is not None else None
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(hidden_size, self.grid_size)[None], persistent=False
        )  # (1, T, D)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """(Re)initialise every weight and the position buffer (adaLN-Zero; xavier-uniform elsewhere)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # the patch conv is a Linear from C·p·p inputs to D outputs: xavier on that view, not on the 4-D kernel
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        # adaLN-Zero: gates (and shifts/scales) start at 0, so every block is the identity ...
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # ... and the output is exactly 0
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        self.pos_embed.copy_(sincos_pos_embed_2d(self.hidden_size, self.grid_size, device=self.pos_embed.device)[None])

    def config(self) -> dict:
        """Every field of the architecture as plain JSON values: the constructor's arguments (``DiT(**{k: config[k]
        for k in DIT_ARGS})`` builds it again) and, as values and text, the fixed choices a reimplementation must
        make the same way."""
        return {
            "input_size": self.input_size,
            "patch_size": self.patch_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "hidden_size": self.hidden_size,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "num_classes": self.num_classes,
            "learn_sigma": False,
            "frequency_embedding_size": self.t_embedder.frequency_dim,
            "max_period": 10000.0,
            "norm_eps": 1e-6,
            "mlp_activation": "gelu_tanh",
            "qkv_bias": True,
            "num_tokens": self.num_tokens,
            "num_params": count_parameters(self),
            "patch_order": "tokens row-major over the (H/p, W/p) grid; a token's output laid out (p, p, C)",
            "pos_embed": "fixed 2-D sin-cos (1, T, D), in the weight files as pos_embed: channels [0, D/2) encode "
            "the token's row, [D/2, D) its column, each as [sin(pos*w), cos(pos*w)], "
            "w_k = 10000^(-k/(D/4))",
            "timestep_embedding": "[cos(t*f), sin(t*f)], f_k = max_period^(-k/(F/2)), F = "
            "frequency_embedding_size, then Linear-SiLU-Linear",
            "block": "x += gate_msa * attn(modulate(LN(x), shift_msa, scale_msa)); x += gate_mlp * "
            "mlp(modulate(LN(x), shift_mlp, scale_mlp)); modulate(x, s, c) = x * (1 + c) + s; "
            "adaLN_modulation(c) chunks in that order",
            "final_layer": "linear(modulate(LN(x), shift, scale)), (shift, scale) = adaLN_modulation(c).chunk(2)",
        }

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, H, W), t (N,) or () float, y (N,) long (class-conditional only) → (N, C, H, W)."""
        n, _, height, width = x.shape
        h = self.x_embedder(x).flatten(2).transpose(1, 2)  # (N, D, H/p, W/p) → (N, T, D), row-major
        # the fp32 table promotes the residual stream to fp32 under bf16 autocast: adaLN-Zero's small gated
        # updates early in training would otherwise round away in bf16's 8-bit mantissa
        h = h + self.pos_embed
        c = self.t_embedder(t.reshape(-1).expand(n))  # (N, D); a 0-d t is broadcast to the batch
        if self.y_embedder is not None:
            if y is None:  # no label: the extra "null" row (what classifier-free guidance drops to)
                y = torch.full((n,), self.y_embedder.num_embeddings - 1, dtype=torch.long, device=x.device)
            c = c + self.y_embedder(y)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                h = checkpoint(block, h, c, use_reentrant=False)
            else:
                h = block(h, c)
        h = self.final_layer(h, c)  # (N, T, p·p·C_out)
        return unpatchify(h, self.patch_size, self.out_channels, height, width)


#: The constructor arguments of :class:`DiT` among the fields of :meth:`DiT.config`.
DIT_ARGS = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio", "num_classes")


# ---------------------------------------------------------------------------------------------------------------
# Builders and accounting
# ---------------------------------------------------------------------------------------------------------------
def build_dit(
    name: str,
    *,
    input_size: int = 32,
    in_channels: int = 4,
    num_classes: int | None = None,
    device: torch.device | str | None = None,
    grad_checkpointing: bool = False,
) -> DiT:
    """The DiT named ``name`` (a key of :data:`DIT_CONFIGS`), built directly on ``device``.

    ``device="meta"`` allocates nothing (for counting parameters of XL models in tests); such a model can be
    materialised with ``model.to_empty(device=...)`` followed by ``model.initialize_weights()``.
    """
    cfg = _config(name)
    with torch.device(device if device is not None else "cpu"):
        return DiT(
            input_size=input_size,
            patch_size=cfg.patch_size,
            in_channels=in_channels,
            hidden_size=cfg.hidden_size,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            num_classes=num_classes,
            grad_checkpointing=grad_checkpointing,
        )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers, such as the position embedding, are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def dit_num_params(name: str, *, in_channels: int = 4, num_classes: int | None = None) -> int:
    """Closed-form parameter count of ``build_dit(name, in_channels=..., num_classes=...)`` (any input size).

    Per block 18·D² + 15·D (qkv 3D²+3D, proj D²+D, MLP 8D²+5D at ratio 4, adaLN 6D²+6D); plus the patch conv
    p²·C·D + D, the timestep MLP 256·D + D + D² + D, the final adaLN 2D² + 2D and output D·p²·C + p²·C, and
    (num_classes + 1)·D for a class embedding.
    """
    cfg = _config(name)
    d, p, c = cfg.hidden_size, cfg.patch_size, in_channels
    hid = int(d * cfg.mlp_ratio)
    block = (3 * d * d + 3 * d) + (d * d + d) + (d * hid + hid + hid * d + d) + (6 * d * d + 6 * d)
    total = cfg.depth * block
    total += p * p * c * d + d  # patch conv
    total += 256 * d + d + d * d + d  # timestep MLP
    total += 2 * d * d + 2 * d + d * p * p * c + p * p * c  # final layer
    if num_classes is not None:
        total += (num_classes + 1) * d
    return total


def dit_flops(name: str, input_size: int = 32, in_channels: int = 4, *, unit: str = "macs") -> int:
    """Forward cost of one image through ``name``: multiply-adds by default (``unit="flops"`` gives 2x).

    Multiply-adds are the unit of the paper's "Gflops" column (fvcore counts one multiply-add as one flop):
    this gives S/2 6.06 G, B/2 23.0 G, L/2 80.7 G, XL/2 118.6 G at 32x32x4, as in the paper's Table 4.
    Counted: every Linear and the patch conv (per token), both attention matmuls (q·kᵀ and attn·v, T²·D each),
    the per-image adaLN and timestep MLPs. Not counted: norms, softmax, activations, adds (O(T·D), < 0.5 %).
    A training step costs ≈ 3x the forward (backward ≈ 2x), so FLOPs per trained image ≈ 6 x this MAC count.
    """
    if unit not in ("macs", "flops"):
        raise ValueError(f"unit must be 'macs' or 'flops', got {unit!r}")
    cfg = _config(name)
    d, p, c = cfg.hidden_size, cfg.patch_size, in_channels
    hid = int(d * cfg.mlp_ratio)
    t = (input_size // p) ** 2
    per_block = t * (3 * d * d + d * d + 2 * d * hid)  # qkv, proj, fc1, fc2 on every token
    per_block += 2 * t * t * d  # q·kᵀ (T×T per head, summed over heads = T²·D) and attn·v
    per_block += 6 * d * d  # adaLN modulation, once per image
    macs = cfg.depth * per_block
    macs += t * p * p * c * d  # patch conv
    macs += 256 * d + d * d  # timestep MLP
    macs += 2 * d * d + t * d * p * p * c  # final adaLN and output Linear
    return macs if unit == "macs" else 2 * macs
