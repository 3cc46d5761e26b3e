"""Example Holoscan app: replay recordings as live beds through the csfm-edge gateway operator.

    python scripts/holoscan_replay.py ARTIFACT RECORDING [RECORDING ...] [--speed 4] [--hop 1] [--out results.npz]

Each recording (any format ``csfm-edge run`` reads) becomes a bed; a replay operator sends every bed's next
second of signal each 1/speed seconds (Holoscan's PeriodicCondition), ``GatewayOp`` scores the windows of
all beds in shared engine calls, and a sink prints each result and keeps them (``--out``: bed, start_s,
flags, features per window). Runs in the Holoscan environment (scripts/test makes ``.venv-holoscan``).
"""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path

import numpy as np
from holoscan.conditions import CountCondition, PeriodicCondition
from holoscan.core import Application, Operator, OperatorSpec

from csfm_edge.live.holoscan import GatewayOp
from csfm_edge.recordings.readers import read_recording
from csfm_edge.runtime.session import Session


class ReplayOp(Operator):
    """Emits each bed's next ``step_s`` of signal per tick, then ``{"end": True}``."""

    def __init__(self, fragment, *args, beds: dict, step_s: float = 1.0, **kwargs):
        self.beds = beds  # name -> (signal [C, N], fs, leads)
        self.step_s = step_s
        self.tick = 0
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("signal")

    def ticks(self) -> int:
        return max(int(np.ceil(s.shape[1] / fs / self.step_s)) for s, fs, _ in self.beds.values()) + 1

    def compute(self, op_input, op_output, context) -> None:
        if self.tick == self.ticks() - 1:
            op_output.emit([{"end": True}], "signal")
            return
        chunks = []
        for bed, (signal, fs, _) in self.beds.items():
            lo, hi = int(self.tick * self.step_s * fs), int((self.tick + 1) * self.step_s * fs)
            if lo < signal.shape[1]:
                chunks.append({"bed": bed, "chunk": signal[:, lo:hi]})
        self.tick += 1
        op_output.emit(chunks, "signal")


class SinkOp(Operator):
    """Prints and keeps every result."""

    def __init__(self, fragment, *args, **kwargs):
        self.results = []
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("results")

    def compute(self, op_input, op_output, context) -> None:
        for result in op_input.receive("results"):
            self.results.append(result)
            print(f"{result.bed:>16} {result.start_s:7.1f} s  latency {result.latency_s * 1e3:7.1f} ms  "
                  f"batch {result.batch:3d}  {'; '.join(result.flags) or 'clean'}", flush=True)


class ReplayApp(Application):
    def __init__(self, session: Session, beds: dict, speed: float, hop_s: float):
        self.session, self.beds, self.speed, self.hop_s = session, beds, speed, hop_s
        self.sink: SinkOp | None = None
        super().__init__()

    def compose(self) -> None:
        replay = ReplayOp(self, beds=self.beds, name="replay")
        replay.add_arg(CountCondition(self, replay.ticks()))
        replay.add_arg(PeriodicCondition(self, timedelta(seconds=1.0 / self.speed)))
        gateway = GatewayOp(self, session=self.session, beds={b: (fs, leads) for b, (_, fs, leads) in
                                                              self.beds.items()},
                            hop_s=self.hop_s, name="csfm_gateway")
        self.sink = SinkOp(self, name="sink")
        self.add_flow(replay, gateway)
        self.add_flow(gateway, self.sink)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("recordings", type=Path, nargs="+")
    parser.add_argument("--speed", type=float, default=4.0, help="replay this many times faster than real time")
    parser.add_argument("--hop", type=float, default=1.0)
    parser.add_argument("--provider", default=None)
    parser.add_argument("--out", type=Path, default=None, help=".npz of every result")
    args = parser.parse_args()
    session = Session.open(args.artifact, provider=args.provider)
    beds = {}
    for path in args.recordings:
        recording = read_recording(path)
        beds[path.stem] = (np.asarray(recording.signal, np.float64), recording.fs, recording.leads)
    app = ReplayApp(session, beds, args.speed, args.hop)
    app.run()
    results = app.sink.results
    print(f"{len(results)} windows from {len(beds)} beds")
    if args.out is not None:
        dim = session.manifest.outputs["features"].width
        np.savez(args.out, bed=np.array([r.bed for r in results]), start_s=np.array([r.start_s for r in results]),
                 flags=np.array([json.dumps(r.flags) for r in results]),
                 features=np.stack([np.full(dim, np.nan, np.float32) if r.features is None else r.features
                                    for r in results]))


if __name__ == "__main__":
    main()
