"""The CSFM signal encoder in PyTorch, with the authors' parameter names and shapes.

Written from ``shared/spec/csfm-model.md``. Export-friendly: plain tensor ops (no einops), channel ids
as an int64 tensor argument, and a time axis of any multiple of 25 up to 2500 (positional rows
0..n-1), so the traced ONNX graph keeps batch, channel and time dynamic.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from csfm_edge.config import (
    HEAD_WIDTH,
    LAYERNORM_EPS,
    MAX_PATCHES,
    PATCH_SAMPLES,
    CSFMConfig,
)
from csfm_edge.leads import NUM_CHANNEL_TYPES
from csfm_edge.spec import check_window_length


class Patchify(nn.Module):
    """[B, C, T] -> [B, C, T/25, 25]; index 0 of the authors' patch embedding (their Rearrange)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], -1, PATCH_SAMPLES)


# The attention core, q/k/v [B, N, heads * 64] -> [B, N, heads * 64], given the number of heads.
AttentionCore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / 8) v in plain ops: the portable graph every exporter and TensorRT take."""
    q, k, v = (t.unflatten(-1, (heads, HEAD_WIDTH)).transpose(1, 2) for t in (q, k, v))
    scores = torch.matmul(q, k.transpose(-1, -2)) * HEAD_WIDTH**-0.5
    return torch.matmul(scores.softmax(dim=-1), v).transpose(1, 2).flatten(2)


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """The same math through ``scaled_dot_product_attention`` (PyTorch's fused kernels)."""
    q, k, v = (t.unflatten(-1, (heads, HEAD_WIDTH)).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention; ``core`` computes softmax(q k^T / 8) v (see :data:`AttentionCore`)."""

    def __init__(self, dim: int, heads: int, core: AttentionCore = math_attention):
        super().__init__()
        self.heads = heads
        self.core = core
        inner = heads * HEAD_WIDTH
        self.norm = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.to_qkv(self.norm(x)).split(self.heads * HEAD_WIDTH, dim=-1)
        return self.to_out(self.core(q, k, v, self.heads))


class FeedForward(nn.Module):
    """LayerNorm -> Linear -> GELU(erf) -> Linear; indices 3 and 5 of the authors' ``net`` are dropout."""

    def __init__(self, dim: int, mlp_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim, eps=LAYERNORM_EPS),
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Identity(),
            nn.Linear(mlp_dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    def __init__(self, config: CSFMConfig, core: AttentionCore = math_attention):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(config.dim, config.heads, core),
                           FeedForward(config.dim, config.mlp_dim)])
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim, eps=LAYERNORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, feed_forward in self.layers:
            x = x + attention(x)
            x = x + feed_forward(x)
        return self.norm(x)


class CSFM(nn.Module):
    """CSFM signal encoder: ``model(signal [B, C, T] float32, channel_ids [C] int64) -> features [B, dim]``.

    ``model.head`` is the classifier (``mlp_head``) when the checkpoint has one, else None.
    ``provenance`` says where the weights came from ("untrained, seed N" or the checkpoint's sha256).
    ``attention`` is the one export switch: :func:`math_attention` (default; the portable graph),
    :func:`fused_attention` (PyTorch's fused kernels), or another core such as the CPU export's
    ONNX Runtime MultiHeadAttention.
    """

    def __init__(self, config: CSFMConfig, attention: AttentionCore = math_attention):
        super().__init__()
        self.config = config
        dim = config.dim
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.ts_channel_type_embedding = nn.Parameter(torch.randn(1, NUM_CHANNEL_TYPES, dim))
        self.ts_pos_embedding = nn.Parameter(torch.randn(1, MAX_PATCHES, dim))
        self.ts_to_patch_embedding = nn.Sequential(
            Patchify(),
            nn.LayerNorm(PATCH_SAMPLES, eps=LAYERNORM_EPS),
            nn.Linear(PATCH_SAMPLES, dim),
            nn.LayerNorm(dim, eps=LAYERNORM_EPS),
        )
        self.transformer = Transformer(config, attention)
        self.mlp_head = nn.Linear(dim, config.head_classes) if config.head_classes else None
        self.provenance = "untrained (random initialisation)"

    @property
    def head(self) -> nn.Linear | None:
        return self.mlp_head

    def forward(self, signal: torch.Tensor, channel_ids: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            check_window_length(int(signal.shape[-1]))
        x = self.ts_to_patch_embedding(signal)  # [B, C, n, dim]
        channel_rows = self.ts_channel_type_embedding[0, channel_ids]  # [C, dim]
        x = x + channel_rows.unsqueeze(1) + self.ts_pos_embedding[0, : x.shape[2]]
        x = x.flatten(1, 2)  # channel-major tokens [B, C*n, dim]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.transformer(x)[:, 0]
