"""PyTorch reference backend: the only runtime path that imports torch (export extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from csfm_edge.errors import BackendUnavailableError


class TorchBackend:
    """Runs a :class:`csfm_edge.model.CSFM` in float32 eval mode on the CPU."""

    name = "torch"

    def __init__(self, model):
        try:
            import torch
        except ImportError:
            raise BackendUnavailableError("the PyTorch reference needs torch: pip install 'csfm-edge[export]'") \
                from None
        self._torch = torch
        self.model = model.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, size: str | None = None) -> TorchBackend:
        from csfm_edge.model import load_checkpoint

        return cls(load_checkpoint(path, size))

    def describe(self) -> dict:
        return {"backend": self.name, "provider": "cpu", "torch": self._torch.__version__,
                "weights": self.model.provenance}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            features = self.model(torch.from_numpy(np.ascontiguousarray(feed["signal"], dtype=np.float32)),
                                  torch.from_numpy(np.asarray(feed["channel_ids"], dtype=np.int64)))
            out = {"features": features.numpy()}
            if self.model.head is not None:
                out["logits"] = self.model.head(features).numpy()
        return out

    def close(self) -> None:
        self.model = None
