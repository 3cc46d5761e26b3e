"""INT8 calibration methods compared on held-out real recordings, for untrained and outlier-stressed weights.

Usage: .venv/bin/python benchmarks/calibration.py [--size tiny] [--windows 16,64,256] [--methods minmax,entropy]
       [--variants untrained,STRESS] [--keep-float none,ln-fed,ff1,qkv] [--providers cpu,openvino]

In one run: CSFM (seeded, UNTRAINED) exported to FP32 ONNX, then quantized to the Q/DQ INT8 graph csfm-edge
ships with each calibration method and number of calibration windows (drawn from every lead set, never a
verification window). Each INT8 graph runs on ONNX Runtime over the verification windows (real 12-lead,
II + PPG, II and PPG recordings the calibration never saw) and its features are compared with FP32 PyTorch:
the worst per-window cosine per lead set is printed.

Untrained weights flatter INT8: their activations have no outliers. Trained transformers have a few
activation channels tens of times larger than the rest, so the same is run on a clearly labelled STRESS
variant of the seeded weights whose LayerNorm gains are raised x30 in 4 channels of every block.
``--keep-float`` names sets of MatMuls left in float (``--int8-keep-float`` patterns), to find which ones
hold the outlier-stressed weights at cosine >= 0.99.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import torch
from common import add_data_flag

from csfm_edge.config import size_config
from csfm_edge.export.calibration import RecordingCalibrationReader
from csfm_edge.export.graph import export_fp32
from csfm_edge.export.precision import ATTENTION, CALIBRATION_METHODS, to_int8
from csfm_edge.metrics import compare
from csfm_edge.model import build
from csfm_edge.recordings.datasets import calibration_batches, lead_set_batches
from csfm_edge.runtime.backends import BackendOptions, open_backend, reference_backend
from csfm_edge.runtime.manifest import graph_manifest, untrained_weights
from csfm_edge.spec import SPEC

OUTLIER_CHANNELS, OUTLIER_GAIN = (7, 100, 333, 600), 30.0
# MatMuls left in float, by what feeds them: the LayerNorm outputs (where the outlier channels are) go into
# to_qkv (attention) and net.1 (the feed-forward's first linear).
KEEP_FLOAT = {"none": (), "attention": (ATTENTION,), "ln-fed": ("to_qkv", r"net\.1(/|:)"), "qkv": ("to_qkv",),
              "ff1": (r"net\.1(/|:)",), "ff2": (r"net\.4(/|:)",)}


def stressed(model):
    """The STRESS variant: LayerNorm gains x30 in 4 channels of every block (activation outliers)."""
    with torch.no_grad():
        for attention, feed_forward in model.transformer.layers:
            for norm in (attention.norm, feed_forward.net[0]):
                norm.weight[list(OUTLIER_CHANNELS)] *= OUTLIER_GAIN
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--windows", default="16,64,256")
    parser.add_argument("--methods", default=",".join(CALIBRATION_METHODS))
    parser.add_argument("--variants", default="untrained,STRESS")
    parser.add_argument("--keep-float", default="attention,none", help=f"comma list of {', '.join(KEEP_FLOAT)} "
                        "(attention: csfm-edge's default)")
    parser.add_argument("--providers", default="cpu", help="where each INT8 graph runs: cpu (ONNX Runtime), "
                        "openvino (in bf16 where the CPU has it, as csfm-edge runs int8 graphs); comma list")
    add_data_flag(parser)
    args = parser.parse_args()
    counts = [int(n) for n in args.windows.split(",")]
    methods = args.methods.split(",")
    held_out = lead_set_batches(args.data)  # the verification windows: never calibration ones
    print(f"CSFM {args.size}, UNTRAINED seed 0; held out: " + "; ".join(b.source for b in held_out))
    print(f"{'weights':9} {'method':10} {'windows':>7} {'float':>9} {'runs on':>8} "
          + " ".join(f"{b.name:>8}" for b in held_out)
          + f" {'worst':>8} {'s':>5}")
    for variant in args.variants.split(","):
        model = build(size_config(args.size), seed=0)
        model = stressed(model) if variant == "STRESS" else model
        reference = [reference_backend(model).run(SPEC.feed(b.signal, b.channel_ids))[SPEC.features]
                     for b in held_out]
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            export_fp32(model, fp32)
            for method, count, kept in itertools.product(methods, counts, args.keep_float.split(",")):
                started = time.perf_counter()
                int8 = Path(tmp) / f"{method}-{count}-{kept}.onnx"
                to_int8(fp32, int8, RecordingCalibrationReader(calibration_batches(args.data, count)), method,
                        KEEP_FLOAT[kept])
                manifest = graph_manifest(model.config, "int8", untrained_weights(0))
                for provider in args.providers.split(","):
                    backend = open_backend(int8, manifest, BackendOptions(provider=provider))
                    worst = [compare(ref, backend.run(SPEC.feed(b.signal, b.channel_ids))[SPEC.features]).min_cosine
                             for b, ref in zip(held_out, reference)]
                    backend.close()
                    print(f"{variant:9} {method:10} {count:7d} {kept:>9} {provider:>8} "
                          + " ".join(f"{w:8.5f}" for w in worst)
                          + f" {min(worst):8.5f} {time.perf_counter() - started:5.0f}", flush=True)


if __name__ == "__main__":
    main()
