"""PyTorch reference backend: the only runtime path that imports torch (export extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from csfm_edge.errors import BackendUnavailableError


class TorchBackend:
    """Runs a :class:`csfm_edge.model.CSFM` in eval mode on the CPU: float32, or with ``bf16_autocast``
    (the fastest plain-PyTorch path together with a model built with fused attention)."""

    name = "torch"

    def __init__(self, model, bf16_autocast: bool = False):
        try:
            import torch
        except ImportError:
            raise BackendUnavailableError("the PyTorch reference needs torch: pip install 'csfm-edge[export]'") \
                from None
        self._torch = torch
        self.model = model.eval()
        self.bf16_autocast = bf16_autocast

    @classmethod
    def from_checkpoint(cls, path: str | Path, size: str | None = None) -> TorchBackend:
        from csfm_edge.model import load_checkpoint

        return cls(load_checkpoint(path, size))

    def describe(self) -> dict:
        core = self.model.transformer.layers[0][0].core.__name__.replace("_", " ")
        mode = f"{core}, " + ("bf16 autocast" if self.bf16_autocast else "fp32 eager")
        return {"backend": self.name, "provider": f"cpu, {mode}", "torch": self._torch.__version__,
                "weights": self.model.provenance}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16_autocast):
            features = self.model(torch.from_numpy(np.ascontiguousarray(feed["signal"], dtype=np.float32)),
                                  torch.from_numpy(np.asarray(feed["channel_ids"], dtype=np.int64)))
            out = {"features": features.float().numpy()}
            if self.model.head is not None:
                out["logits"] = self.model.head(features).float().numpy()
        return out

    def close(self) -> None:
        self.model = None
