"""Analytic FLOPs of one CSFM window, and published peaks of common NVIDIA devices, for rooflines.

FLOPs count multiply-adds as 2. With n = T/25 patches per channel, C channels, N = 1 + C*n tokens,
width d, inner width i = heads * 64, MLP width m and depth L:

    patch embedding   2 * C*n * 25 * d
    per block         2*N*d*3i (qkv) + 2*N*N*i (q k^T) + 2*N*N*i (attention x v) + 2*N*i*d (output)
                      + 2*N*d*m + 2*N*m*d (feed-forward)
    total             patch + L * block   (LayerNorm, softmax, GELU and adds are left out: < 1%)
"""

from __future__ import annotations

import re

from csfm_edge.config import PATCH_SAMPLES, CSFMConfig


def window_flops(config: CSFMConfig, channels: int, time: int = 2500) -> int:
    n = time // PATCH_SAMPLES
    tokens = 1 + channels * n
    d, i, m = config.dim, config.inner_dim, config.mlp_dim
    patch = 2 * channels * n * PATCH_SAMPLES * d
    block = 2 * tokens * d * 3 * i + 4 * tokens * tokens * i + 2 * tokens * i * d + 4 * tokens * d * m
    return patch + config.depth * block


# Dense (no sparsity) peak throughput in TFLOP/s (TOP/s for int8), from NVIDIA's datasheets, keyed by a
# pattern of the name nvidia-smi or the device tree reports (first match wins: PCIe before plain H100).
# Jetson figures are the GPU alone (no DLA), at the module's maximum power mode.
PEAKS_TFLOPS: list[tuple[str, str, dict[str, float]]] = [
    (r"H100.*(PCIe|NVL)", "H100 PCIe", {"fp32": 51.0, "fp16": 756.0, "int8": 1513.0}),
    (r"H100", "H100 SXM", {"fp32": 67.0, "fp16": 989.0, "int8": 1979.0}),
    (r"H200", "H200", {"fp32": 67.0, "fp16": 989.0, "int8": 1979.0}),
    (r"A100", "A100", {"fp32": 19.5, "fp16": 312.0, "int8": 624.0}),
    (r"L40S", "L40S", {"fp32": 91.6, "fp16": 362.0, "int8": 733.0}),
    (r"\bL4\b", "L4", {"fp32": 30.3, "fp16": 121.0, "int8": 242.0}),
    (r"\bA10\b", "A10", {"fp32": 31.2, "fp16": 125.0, "int8": 250.0}),
    (r"\bT4\b", "T4", {"fp32": 8.1, "fp16": 65.0, "int8": 130.0}),
    (r"RTX 4090", "RTX 4090", {"fp32": 82.6, "fp16": 165.2, "int8": 660.6}),
    (r"AGX Orin", "Jetson AGX Orin 64GB", {"fp32": 5.3, "fp16": 42.5, "int8": 85.0}),
    (r"Orin NX", "Jetson Orin NX 16GB", {"fp32": 1.9, "fp16": 15.0, "int8": 30.0}),
    (r"Orin Nano", "Jetson Orin Nano 8GB", {"fp32": 1.3, "fp16": 10.0, "int8": 20.0}),
]


def published_peak(gpu_name: str | None, precision: str) -> float | None:
    """Peak TFLOP/s of the named GPU at ``precision``; None for a GPU not in the table."""
    if not gpu_name:
        return None
    for pattern, _, peaks in PEAKS_TFLOPS:
        if re.search(pattern, gpu_name, re.IGNORECASE):
            return peaks.get(precision)
    return None


def cpu_peak_precision(compute: str, backend: dict) -> str:
    """Which of the CPU's measured limits (fp32, bf16, int8) a target is held to: int8 graphs the int8 one
    (their large MatMuls are integer; the float attention scores count against it too), anything a backend
    runs in bf16 (OpenVINO's bf16 inference precision, PyTorch bf16 autocast) the bf16 one, the rest fp32
    (ONNX Runtime's CPU provider computes an fp16 graph's products in float32)."""
    if compute == "int8":
        return "int8"
    return "bf16" if "bf16" in str(backend.get("provider", "")) else "fp32"
