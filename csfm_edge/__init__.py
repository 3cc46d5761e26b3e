"""csfm-edge: the CSFM cardiac foundation model from research checkpoint to fast edge and server inference.

Subpackages:
    csfm_edge.model    PyTorch reference (imports torch; export and reference checks only)
    csfm_edge.export   ONNX export, precision variants, TensorRT builds
    csfm_edge.runtime  slim inference: NumPy/SciPy preprocessing and engine sessions, never imports torch
"""

__version__ = "0.1.0"
