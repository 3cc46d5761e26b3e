"""Building CSFM models: seeded random weights, or a checkpoint in the authors' layout.

The loader accepts the authors' flat dict with the ``encoder.`` prefix, a bare state dict, and dicts
nested under ``model`` / ``state_dict``; infers the widths from the tensor shapes; ignores the
pretraining decoder and the text branch; keeps a fine-tuned ``mlp_head`` of any width.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from csfm_edge.config import HEAD_WIDTH, CSFMConfig, matching_size, size_config
from csfm_edge.errors import CheckpointError
from csfm_edge.fileio import sha256_of
from csfm_edge.model.csfm import CSFM, AttentionCore, math_attention

# Pretraining-decoder and text-branch parameters: present in real checkpoints, unused for signals.
IGNORED_PREFIXES = (
    "dense_scratch.", "act_1_postprocess.", "act_2_postprocess.", "act_3_postprocess.",
    "act_4_postprocess.", "dense_act_postprocess.", "dense_head.",
    "text_to_embedding.", "text_pos_embedding", "text_type_embedding",
)
_LAYER_KEY = re.compile(r"^transformer\.layers\.(\d+)\.")


@dataclass
class LoadReport:
    """What the loader did with each key, so a user can see nothing was silently dropped."""

    path: str
    sha256: str
    size: str | None
    config: CSFMConfig
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        size = self.size or f"custom (dim {self.config.dim}, depth {self.config.depth})"
        head = f"head {self.config.head_classes} classes" if self.config.head_classes else "no head"
        return (f"{Path(self.path).name}: CSFM {size}, {head}; loaded {len(self.loaded)} keys, "
                f"ignored {len(self.ignored)} (decoder/text branch/other)")


def build(size_or_config: str | CSFMConfig, seed: int | None = None, *,
          attention: AttentionCore = math_attention) -> CSFM:
    """A CSFM with random weights (seeded for reproducibility): UNTRAINED, for demos and tests."""
    config = size_config(size_or_config) if isinstance(size_or_config, str) else size_or_config
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CSFM(config, attention)
    else:
        model = CSFM(config, attention)
    model.provenance = f"untrained, seed {seed}" if seed is not None else "untrained, unseeded"
    return model.eval()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a non-checkpoint file
        if "Unsupported global" in str(exc):  # pickled objects besides tensors: never unpickled (that runs code)
            raise CheckpointError(f"{path} is not a plain checkpoint: it holds Python objects besides tensors, "
                                  "which csfm-edge does not unpickle (that could run code); save the state dict "
                                  "alone (torch.save(model.state_dict(), ...))") from None
        # torch's own message advises weights_only=False (unpickling arbitrary code): never repeat it
        first = "" if "weights_only" in str(exc) else f": {str(exc).splitlines()[0]}" if str(exc) else ""
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt, truncated or another "
                              f"format; {type(exc).__name__}{first})") from None
    for _ in range(3):  # unwrap {"model": ...} / {"state_dict": ...} nesting
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in ("model", "state_dict") if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors (got {type(obj).__name__})")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Keep the encoder's keys without the ``module.`` / ``encoder.`` prefixes; list the rest."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("encoder.") for k in state):
        kept = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        return kept, [k for k in state if not k.startswith("encoder.")]
    return state, []


def _shape(state: dict[str, torch.Tensor], key: str, rank: int) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"checkpoint lacks encoder key {key!r}: not a CSFM checkpoint")
    shape = tuple(state[key].shape)
    if len(shape) != rank:
        raise CheckpointError(f"key {key!r} has shape {list(shape)}, expected rank {rank}")
    return shape


def infer_config(state: dict[str, torch.Tensor]) -> CSFMConfig:
    """Widths from tensor shapes (head width 64); the size name when they match a released size."""
    dim = _shape(state, "cls_token", 3)[-1]
    depth = 1 + max((int(m.group(1)) for k in state if (m := _LAYER_KEY.match(k))), default=-1)
    if depth == 0:
        raise CheckpointError("checkpoint lacks encoder key 'transformer.layers.0.0.to_qkv.weight': "
                              "not a CSFM checkpoint")
    inner = _shape(state, "transformer.layers.0.0.to_out.0.weight", 2)[1]
    if inner % HEAD_WIDTH:
        raise CheckpointError(f"key 'transformer.layers.0.0.to_out.0.weight' has inner width {inner}, "
                              f"not a multiple of the head width {HEAD_WIDTH}: fits no CSFM size")
    mlp_dim = _shape(state, "transformer.layers.0.1.net.1.weight", 2)[0]
    head = _shape(state, "mlp_head.weight", 2)[0] if "mlp_head.weight" in state else 0
    config = CSFMConfig(dim, depth, inner // HEAD_WIDTH, mlp_dim, head)
    return CSFMConfig(dim, depth, inner // HEAD_WIDTH, mlp_dim, head, matching_size(config))


def load_checkpoint(path: str | Path, size: str | None = None, *, attention: AttentionCore = math_attention) -> CSFM:
    """Load an authors'-format checkpoint; ``model.load_report`` lists loaded and ignored keys.

    Refuses, naming the key, a checkpoint that lacks an encoder key or whose shapes fit no CSFM
    architecture, and one that is not the ``size`` asked for.
    """
    path = Path(path)
    raw = _read_state_dict(path)
    state, ignored = _strip_prefixes(raw)
    ignored += [k for k in state if k.startswith(IGNORED_PREFIXES)]
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    config = infer_config(state)
    if size is not None:
        wanted = size_config(size)
        if not wanted.same_widths(config):
            found = config.name or f"custom (dim {config.dim}, depth {config.depth}, heads {config.heads})"
            raise CheckpointError(f"{path.name} is a CSFM {found} checkpoint, not {wanted.name}")
    model = CSFM(config, attention)
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise CheckpointError(f"checkpoint lacks encoder key {key!r}")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"key {key!r} has shape {list(state[key].shape)}, but the other keys describe "
                f"{list(tensor.shape)}: fits no CSFM architecture")
    unexpected = sorted(set(state) - set(expected))
    model.load_state_dict({k: state[k].to(torch.float32) for k in expected}, strict=True)
    digest = sha256_of(path)
    model.provenance = f"checkpoint {path.name} sha256:{digest}"
    model.load_report = LoadReport(str(path), digest, config.name, config,
                                   loaded=sorted(expected), ignored=sorted(ignored + unexpected))
    return model.eval()


def rebuild_weights(config: CSFMConfig, source: str, *, seed: int | None = None, sha256: str | None = None,
                    name: str | None = None, checkpoint: str | Path | None = None) -> CSFM:
    """The weights an artifact was made from: the same seed, or the same checkpoint (sha256 checked).

    ``source`` is ``"untrained"`` (rebuilt from ``seed``) or ``"checkpoint"`` (``checkpoint`` must be
    the file whose sha256 the artifact recorded).
    """
    if source == "untrained":
        if checkpoint is not None:  # a checkpoint given for nothing must not let a check pass unread
            raise CheckpointError(f"the artifact has UNTRAINED weights (seed {seed}), not {Path(checkpoint).name}: "
                                  "leave --checkpoint out (its reference is rebuilt from the seed)")
        return build(config, seed=seed)
    if checkpoint is None:
        raise CheckpointError(f"the artifact was exported from {name}: pass --checkpoint")
    model = load_checkpoint(checkpoint)
    if model.load_report.sha256 != sha256:
        raise CheckpointError(f"{Path(checkpoint).name} is not the checkpoint the artifact was exported from "
                              f"({name}, sha256 {str(sha256)[:12]}...)")
    return model
