"""csfm-edge: the CSFM cardiac foundation model from research checkpoint to fast edge and server inference.

Layers, lowest first (each imports only its own layer or lower ones; see README "Layout"):
    errors, leads, config, spec, profiles, ...  facts every layer shares (torch-free)
    csfm_edge.model       PyTorch reference (imports torch; export and reference checks only)
    csfm_edge.runtime     slim inference: NumPy/SciPy preprocessing and engine sessions, never imports torch
    csfm_edge.recordings  files in, bundled sample, real data sets
    csfm_edge.export      ONNX export, precision variants, verification, TensorRT builds
    csfm_edge.bench / serving, then the command line
"""

__version__ = "0.1.0"
