"""The ``csfm-edge`` command line: a table of subcommands, each forwarding its flags to one library function.

The table lives here and nothing in the library imports this module (Polygraphy's tool registry is
the model). A :class:`~csfm_edge.errors.CsfmError` (anything a user can cause) becomes one line on
stderr and exit status 1, never a traceback. Heavy libraries are imported inside the subcommands, so
``csfm-edge --help`` needs only NumPy/SciPy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from csfm_edge import __version__
from csfm_edge import commands as c
from csfm_edge.errors import CsfmError

# Optional dependencies and the extra that brings each.
EXTRAS = {"torch": "export", "onnx": "export", "matplotlib": "plot", "wfdb": "wfdb", "openvino": "openvino",
          "neurokit2": "dev", "cuda": "tensorrt", "pyarrow": "table", "pyedflib": "edf",
          "model_signing": "sign", "OpenSSL": "sign",
          "ray": "ray", "pylsl": "live", "prometheus_client": "live"}
# Base dependencies a broken or partial install can lack: the command that restores each.
BASE = {"onnxruntime": "pip install onnxruntime (onnxruntime-gpu on NVIDIA machines)",
        "numpy": "pip install csfm-edge", "scipy": "pip install csfm-edge", "tqdm": "pip install csfm-edge"}


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    flags: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS = (
    Command("env", "print Python, platform and package versions (for bug reports)", c.no_flags, c.env),
    Command("export", "export CSFM to ONNX (fp32/fp16/int8), verified against PyTorch, with manifests",
            c.export_flags, c.export),
    Command("verify", "re-run an artifact's verification against the PyTorch reference", c.verify_flags, c.verify),
    Command("build", "build a TensorRT engine (.plan) from an exported ONNX graph", c.build_flags, c.build),
    Command("info", "print an artifact's manifest readably (and check the file against it)", c.info_flags, c.info),
    Command("sign", "sign artifacts (OpenSSF model signing): NAME.sig beside each, checked by --trust",
            c.sign_flags, c.sign),
    Command("run", "run an artifact on a recording: per-window features/logits with times and flags",
            c.run_flags, c.run),
    Command("bench", "benchmark artifacts across batch sizes, lead sets and window lengths", c.bench_flags, c.bench),
    Command("tune", "time every verified artifact of a folder on every backend setting here; pick the fastest "
            "accurate one for Session.open(FOLDER)", c.tune_flags, c.tune),
    Command("bench-report", "markdown tables and PNG plots comparing bench results across machines",
            c.report_flags, c.bench_report),
    Command("triton-repo", "write a Triton Inference Server model repository (one model per lead set)",
            c.triton_repo_flags, c.triton_repo),
    Command("serve", "serve an artifact (PyTriton) or a model repository (bundled tritonserver) with NVIDIA Triton",
            c.serve_flags, c.serve),
    Command("doctor", "what this machine has (driver, CUDA, TensorRT, GPU) and whether csfm-edge works on it",
            c.doctor_flags, c.doctor),
    Command("gateway", "serve a ward: many beds' live ECG/PPG (Lab Streaming Layer) scored in shared engine calls",
            c.gateway_flags, c.gateway),
)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="csfm-edge", description=__doc__.splitlines()[0])
    root.add_argument("--version", action="version", version=f"csfm-edge {__version__}")
    subparsers = root.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.flags(sub)
        sub.set_defaults(run=command.run)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CsfmError as exc:
        print(f"csfm-edge {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:  # an optional extra that is not installed
        module = (exc.name or "").split(".")[0]
        extra = EXTRAS.get(module)
        if extra is None and module not in BASE:
            raise
        install = BASE.get(module) or f"pip install 'csfm-edge[{extra}]'"
        print(f"csfm-edge {args.command}: error: needs {module!r}, which is not installed: {install}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"csfm-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
