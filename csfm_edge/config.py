"""CSFM architecture settings for every size, torch-free so manifests and the runtime can use them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from csfm_edge.errors import CsfmError
from csfm_edge.leads import NUM_CHANNEL_TYPES

SAMPLE_RATE_HZ = 250.0
WINDOW_SAMPLES = 2500  # 10 s at 250 Hz
PATCH_SAMPLES = 25
MAX_PATCHES = WINDOW_SAMPLES // PATCH_SAMPLES
HEAD_WIDTH = 64  # per attention head
LAYERNORM_EPS = 1e-5


@dataclass(frozen=True)
class CSFMConfig:
    """Widths of one CSFM encoder; ``head_classes`` 0 means no classifier head."""

    dim: int
    depth: int
    heads: int
    mlp_dim: int
    head_classes: int = 0
    name: str | None = None

    @property
    def inner_dim(self) -> int:
        return self.heads * HEAD_WIDTH

    def with_head(self, head_classes: int) -> CSFMConfig:
        return CSFMConfig(self.dim, self.depth, self.heads, self.mlp_dim, head_classes, self.name)

    def same_widths(self, other: CSFMConfig) -> bool:
        """True when both describe the same encoder (heads and names may differ)."""
        return (self.dim, self.depth, self.heads, self.mlp_dim) == (
            other.dim, other.depth, other.heads, other.mlp_dim)

    def signal_path_parameters(self) -> int:
        """Parameter count of the signal encoder without head, from the spec's formula."""
        d, inner, mlp = self.dim, self.inner_dim, self.mlp_dim
        embed = d + NUM_CHANNEL_TYPES * d + MAX_PATCHES * d  # cls, channel types, positions
        patch = 2 * PATCH_SAMPLES + PATCH_SAMPLES * d + d + 2 * d
        block = 2 * d + 3 * inner * d + inner * d + d + 2 * d + d * mlp + mlp + mlp * d + d
        return embed + patch + self.depth * block + 2 * d

    def to_dict(self) -> dict:
        return asdict(self)


SIZES: dict[str, CSFMConfig] = {
    "tiny": CSFMConfig(dim=768, depth=6, heads=8, mlp_dim=1024, name="tiny"),
    "base": CSFMConfig(dim=768, depth=12, heads=12, mlp_dim=3072, name="base"),
    "large": CSFMConfig(dim=1024, depth=16, heads=24, mlp_dim=4096, name="large"),
}


def size_config(size: str) -> CSFMConfig:
    """Size name (case-insensitive) -> config; an unknown name raises an error listing the sizes."""
    key = size.strip().lower()
    if key not in SIZES:
        raise CsfmError(f"unknown CSFM size {size!r}; choose one of {', '.join(SIZES)}")
    return SIZES[key]


def matching_size(config: CSFMConfig) -> str | None:
    """Name of the released size with these widths, or None for a custom architecture."""
    for name, known in SIZES.items():
        if known.same_widths(config):
            return name
    return None
