"""Progress lines on stderr for long work (export, calibration, sweeps).

Messages carrying a counter ``[i/n]`` overwrite each other on a terminal; in a log (not a TTY) only
the first and last of such a run are printed, so CI logs stay short but still show the work moving.
"""

from __future__ import annotations

import re
import sys

_COUNTER = re.compile(r"\[(\d+)/(\d+)\]")


def console_progress(message: str) -> None:
    match = _COUNTER.search(message)
    stream = sys.stderr
    if match is None:
        stream.write(message + "\n")
    elif stream.isatty():
        done, total = int(match.group(1)), int(match.group(2))
        stream.write("\r\033[K" + message + ("\n" if done == total else ""))
    elif match.group(1) in ("1", match.group(2)):
        stream.write(message + "\n")
    stream.flush()
