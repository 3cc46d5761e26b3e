"""PyTorch reference backend: the only runtime path that imports torch (export extra), and lazily.

The model package is reached from here alone, so ``import csfm_edge.runtime`` never loads torch.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from csfm_edge.errors import BackendUnavailableError
from csfm_edge.runtime.backends.options import BackendOptions
from csfm_edge.runtime.manifest import Manifest, checkpoint_weights, graph_manifest
from csfm_edge.spec import SPEC


def _torch():
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError("the PyTorch reference needs torch: pip install 'csfm-edge[export]'") from None
    return torch


class TorchBackend:
    """Runs a :class:`csfm_edge.model.CSFM` in eval mode on the CPU: float32, or with ``autocast="bf16"``
    (the fastest plain-PyTorch path together with a model built with fused attention).

    Opened from ``(path, manifest, options)`` like every backend: the weights the manifest names (the
    same seed, or ``options.checkpoint``), or the checkpoint ``path`` itself when given ``model`` already
    loaded from it."""

    name = "torch"
    on_gpu = False
    device_timing = False

    def __init__(self, path: Path | None, manifest: Manifest | None, options: BackendOptions, *, model=None):
        self._torch = _torch()
        if options.provider not in (None, "cpu"):
            raise BackendUnavailableError(f"the PyTorch reference runs on the CPU here, not on provider "
                                          f"{options.provider!r}")
        if model is None:
            from csfm_edge.model import rebuild_weights

            weights = manifest.weights
            model = rebuild_weights(manifest.model.config(), weights.source, seed=weights.seed, sha256=weights.sha256,
                                    name=weights.name, checkpoint=options.checkpoint)
        self.model = model.eval()
        self.bf16_autocast = options.autocast == "bf16"
        if options.autocast not in (None, "bf16"):
            raise BackendUnavailableError(f"{options.autocast} autocast needs the PyTorch reference on CUDA")
        self._lock = threading.Lock()  # one forward at a time: results equal sequential ones

    @classmethod
    def of_model(cls, model, options: BackendOptions) -> TorchBackend:
        """Over a model already in memory (export verification, plain-PyTorch baselines)."""
        return cls(None, None, options, model=model)

    def describe(self) -> dict:
        core = self.model.transformer.layers[0][0].core.__name__.replace("_", " ")
        mode = f"{core}, " + ("bf16 autocast" if self.bf16_autocast else "fp32 eager")
        return {"backend": self.name, "provider": f"cpu, {mode}", "torch": self._torch.__version__,
                "weights": self.model.provenance}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with self._lock, torch.inference_mode(), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16_autocast):
            features = self.model(torch.from_numpy(np.ascontiguousarray(feed[SPEC.signal], dtype=np.float32)),
                                  torch.from_numpy(np.asarray(feed[SPEC.channel_ids], dtype=np.int64)))
            out = {SPEC.features: features.float().numpy()}
            if self.model.head is not None:
                out[SPEC.logits] = self.model.head(features).float().numpy()
        return out

    def close(self) -> None:
        self.model = None


def open_checkpoint(path: Path, options: BackendOptions) -> tuple[TorchBackend, Manifest]:
    """A checkpoint run directly, with what a manifest would say of it."""
    _torch()
    from csfm_edge.model import load_checkpoint

    model = load_checkpoint(path)
    manifest = graph_manifest(model.config, "fp32", checkpoint_weights(model.load_report), artifact="checkpoint")
    return TorchBackend(path, manifest, options, model=model), manifest
