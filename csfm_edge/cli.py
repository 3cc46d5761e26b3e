"""The ``csfm-edge`` command line: each subcommand forwards its flags to one library function.

A :class:`~csfm_edge.errors.CsfmError` (anything a user can cause) becomes one line on stderr and
exit status 1, never a traceback. Heavy libraries are imported inside the subcommands, so
``csfm-edge --help`` needs only NumPy/SciPy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from csfm_edge import __version__
from csfm_edge.errors import CsfmError

# Optional dependencies and the extra that brings each.
EXTRAS = {"torch": "export", "onnx": "export", "onnxscript": "export", "matplotlib": "plot", "wfdb": "wfdb",
          "openvino": "openvino", "neurokit2": "dev", "cuda": "tensorrt"}

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help_text: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register ``run(args) -> exit status`` as subcommand ``name``."""

    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help_text, configure, run)
        return run

    return register


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="csfm-edge", description=__doc__.splitlines()[0])
    root.add_argument("--version", action="version", version=f"csfm-edge {__version__}")
    subparsers = root.add_subparsers(dest="command", required=True)
    for name, (help_text, configure, run) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        configure(sub)
        sub.set_defaults(run=run)
    return root


def main(argv: list[str] | None = None) -> int:
    import csfm_edge.commands  # noqa: F401  (registers the subcommands)

    args = parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CsfmError as exc:
        print(f"csfm-edge {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:  # an optional extra that is not installed
        module = (exc.name or "").split(".")[0]
        extra = EXTRAS.get(module)
        if extra is None:
            raise
        print(f"csfm-edge {args.command}: error: needs {module!r}, which is not installed: "
              f"pip install 'csfm-edge[{extra}]'", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"csfm-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # run as `python -m csfm_edge.cli`: use the importable module's registry
    from csfm_edge.cli import main as registered_main

    sys.exit(registered_main())
