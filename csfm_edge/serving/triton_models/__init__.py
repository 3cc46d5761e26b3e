"""Triton Python-backend models that ``csfm-edge triton-repo`` copies into a repository as ``1/model.py``.

They run inside Triton's Python-backend stub, which provides ``triton_python_backend_utils``; csfm-edge
(base package) must be importable there (see README, "Serving with Triton").
"""
