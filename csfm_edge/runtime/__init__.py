"""Slim inference: NumPy/SciPy preprocessing and engine sessions. Never imports torch."""

from csfm_edge.runtime.preprocess import preprocess
from csfm_edge.runtime.session import EmbedResult, Session, Stream, StreamResult

__all__ = ["EmbedResult", "Session", "Stream", "StreamResult", "preprocess"]
