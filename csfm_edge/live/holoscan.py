"""A Holoscan operator wrapping the ward :class:`~csfm_edge.runtime.gateway.Gateway`, for bedside pipelines
built on NVIDIA Holoscan (IGX Orin, Jetson).

``GatewayOp`` takes messages on its ``signal`` port: a dict ``{"bed": name, "chunk": [C, n] array}`` (plus
``"timestamps"`` and ``"leads"`` as :meth:`Gateway.push` takes them), or a list of such dicts, or
``{"end": True}`` once the source is done. On its ``results`` port it emits, at every compute, the list of
:class:`~csfm_edge.runtime.gateway.GatewayResult` that came in since the last one; after ``{"end": True}``
it closes the gateway (scoring every window already due) and emits the rest. Beds are declared up front
(``beds={"bed-7": (500, ["I", "II"])}``); the Session is opened by the caller and shared.

Needs ``holoscan`` (``holoscan-cu12`` 4.6 runs on Python 3.11 on CPU-only machines too, with
``nvidia-cuda-runtime-cu12``'s ``lib`` folder on ``LD_LIBRARY_PATH``).
"""

from __future__ import annotations

import queue
from collections.abc import Mapping

from holoscan.core import Operator, OperatorSpec

from csfm_edge.runtime.gateway import Gateway, GatewayResult
from csfm_edge.runtime.session import Session


class GatewayOp(Operator):
    """Pushes each ``signal`` message into a Gateway; emits the results ready on ``results``."""

    def __init__(self, fragment, *args, session: Session, beds: Mapping[str, tuple], hop_s: float = 1.0,
                 max_batch: int = 32, max_delay_s: float = 0.05, **kwargs):
        self.session = session
        self.bed_specs = dict(beds)
        self.settings = dict(hop_s=hop_s, max_batch=max_batch, max_delay_s=max_delay_s)
        self.ready: queue.SimpleQueue[GatewayResult] = queue.SimpleQueue()
        self.gateway: Gateway | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("signal")
        spec.output("results")

    def start(self) -> None:
        self.gateway = Gateway(self.session, self.ready.put, **self.settings)
        for bed, (fs, leads) in self.bed_specs.items():
            self.gateway.add(bed, fs, leads)

    def compute(self, op_input, op_output, context) -> None:
        message = op_input.receive("signal")
        for item in message if isinstance(message, list) else [message]:
            if item.get("end"):
                if self.gateway is not None:
                    self.gateway.close(drain=True)
                    self.gateway = None
                continue
            if self.gateway is None:
                continue  # after the end: nothing more is scored
            self.gateway.push(item["bed"], item["chunk"], item.get("timestamps"), leads=item.get("leads"))
        self.gateway.check() if self.gateway is not None else None
        results = []
        while True:
            try:
                results.append(self.ready.get_nowait())
            except queue.Empty:
                break
        op_output.emit(results, "results")

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.close(drain=False)
            self.gateway = None
