"""PyTorch reference CSFM (imports torch): used by the exporter and the reference backend only."""

from csfm_edge.model.checkpoint import LoadReport, build, infer_config, load_checkpoint
from csfm_edge.model.csfm import CSFM, check_window_length, fused_attention, math_attention

__all__ = ["CSFM", "LoadReport", "build", "check_window_length", "fused_attention", "infer_config",
           "load_checkpoint", "math_attention"]
