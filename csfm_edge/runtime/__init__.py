"""Slim inference: NumPy/SciPy preprocessing and engine sessions. Never imports torch."""

from csfm_edge.runtime.preprocess import preprocess

__all__ = ["preprocess"]
