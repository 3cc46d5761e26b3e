"""PyTorch reference CSFM (imports torch): used by the exporter and the reference backend only."""

from csfm_edge.model.checkpoint import LoadReport, build, infer_config, load_checkpoint, rebuild_weights
from csfm_edge.model.csfm import CSFM, fused_attention, math_attention

__all__ = ["CSFM", "LoadReport", "build", "fused_attention", "infer_config",
           "load_checkpoint", "math_attention",
           "rebuild_weights"]
