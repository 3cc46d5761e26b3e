"""Serving at scale: Triton Inference Server model repositories and a PyTriton server."""
