"""PyTorch reference backend: the only runtime path that imports torch (export extra), and lazily.

The model package is reached from here alone, so ``import csfm_edge.runtime`` never loads torch.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from csfm_edge.errors import BackendUnavailableError
from csfm_edge.runtime.manifest import Manifest, ModelInfo, WeightsInfo, model_outputs, preprocessing_record
from csfm_edge.runtime.preprocess import DEFAULT_PPG_ORDER
from csfm_edge.spec import SPEC


def _torch():
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError("the PyTorch reference needs torch: pip install 'csfm-edge[export]'") from None
    return torch


class TorchBackend:
    """Runs a :class:`csfm_edge.model.CSFM` in eval mode on the CPU: float32, or with ``bf16_autocast``
    (the fastest plain-PyTorch path together with a model built with fused attention)."""

    name = "torch"

    def __init__(self, model, bf16_autocast: bool = False):
        self._torch = _torch()
        self.model = model.eval()
        self.bf16_autocast = bf16_autocast
        self._lock = threading.Lock()  # one forward at a time: results equal sequential ones

    @classmethod
    def for_manifest(cls, manifest: Manifest, checkpoint: str | Path | None = None) -> TorchBackend:
        """The PyTorch reference for the weights a manifest names (the same seed or checkpoint)."""
        _torch()
        from csfm_edge.model import rebuild_weights

        weights = manifest.weights
        return cls(rebuild_weights(manifest.model.config(), weights.source, seed=weights.seed,
                                   sha256=weights.sha256, name=weights.name, checkpoint=checkpoint))

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


def open_checkpoint(path: Path) -> tuple[TorchBackend, Manifest]:
    """A checkpoint run directly, with what a manifest would say of it."""
    _torch()
    from csfm_edge.model import load_checkpoint

    model = load_checkpoint(path)
    report = model.load_report
    manifest = Manifest(
        artifact="checkpoint", precision="fp32", model=ModelInfo.of(model.config),
        weights=WeightsInfo("checkpoint", name=Path(report.path).name, sha256=report.sha256,
                            keys_loaded=len(report.loaded), keys_ignored=len(report.ignored)),
        inputs={}, outputs=model_outputs(model.config),
        preprocessing=preprocessing_record(DEFAULT_PPG_ORDER))
    return TorchBackend(model), manifest
