"""``csfm-edge serve``: a csfm-edge Session behind NVIDIA Triton, through PyTriton (its bundled server).

One Triton model per lead set (the same names as ``triton-repo``), each taking ``signal`` float32
[channels, 2500] per request with dynamic batching; Triton validates shapes and dtypes, so a bad
request gets an error response and the server keeps serving. PyTriton 0.7 needs numpy < 2: install it
in its own environment (see README, "Serving").
"""

from __future__ import annotations

import os
import signal
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from csfm_edge.config import WINDOW_SAMPLES
from csfm_edge.errors import BackendUnavailableError
from csfm_edge.leads import lead_set
from csfm_edge.runtime.backends import BackendOptions
from csfm_edge.runtime.session import Session
from csfm_edge.serving import MAX_BATCH, MAX_QUEUE_DELAY_US
from csfm_edge.serving.ports import check_ports
from csfm_edge.serving.requests import score_requests
from csfm_edge.serving.triton_repo import model_name
from csfm_edge.spec import SPEC


@dataclass
class ServeRequest:
    artifact: Path
    lead_sets: list[str] = field(default_factory=lambda: ["ii+ppg", "12lead"])
    http_port: int = 8000
    max_batch: int = MAX_BATCH
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US
    options: BackendOptions = field(default_factory=BackendOptions)
    host: str = "127.0.0.1"
    trust: Path | None = None  # open the artifact only if signed (see csfm_edge.runtime.trust)


ERROR_OUTPUT = "error"  # per request: empty, or one line saying why this request was not scored


class BatchLog:
    """Sizes of the batches the server handed to the model (how well dynamic batching worked)."""

    def __init__(self):
        self.sizes: list[int] = []
        self.mixed = 0  # batches in which bad requests got errors while the others were scored


class RequestIsolatingInfer:
    """PyTriton's inference callable for one lead set: a batch of requests in, one response per request.

    PyTriton fails every request of a batch when the callable raises, and its message carries a
    traceback with server paths. So nothing raises here: :func:`score_requests` scores the good
    requests together, each bad one (NaN, wrong values) gets NaN outputs and its own one-line
    reason in the ``error`` output, and the rest of its batch is answered as usual.
    """

    def __init__(self, session: Session, ids: np.ndarray, log: BatchLog):
        self.session, self.ids, self.log = session, ids, log

    def __call__(self, requests) -> list[dict[str, np.ndarray]]:
        signals = [np.asarray(r[SPEC.signal]) for r in requests]
        answers = score_requests(self.session, self.ids, signals)
        self.log.sizes.append(sum(len(x) for x, a in zip(signals, answers) if a.outputs is not None))
        failed = sum(a.outputs is None for a in answers)
        self.log.mixed += 0 < failed < len(answers)
        responses = []
        for window, answer in zip(signals, answers):
            out = answer.outputs if answer.outputs is not None else self.session.nan_outputs(len(window))
            out[ERROR_OUTPUT] = np.array([[(answer.error or "").encode()]] * len(window), dtype=np.bytes_)
            responses.append(out)
        return responses


def _python_libdir_first() -> None:
    """Triton's Python-backend stub must load this interpreter's libpython, not the system's."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    paths = os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    if libdir and paths[:1] != [libdir]:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *[p for p in paths if p]])


def start(request: ServeRequest, workspace: Path | None = None):
    """Bind one model per lead set and start Triton in the background; returns (triton, session, log)."""
    lead_sets = {name: np.asarray(lead_set(name), dtype=np.int64) for name in request.lead_sets}
    check_ports(request.host, request.http_port)
    session = Session.open(request.artifact, request.options, trust=request.trust)  # refused: no server started
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError:
        session.close()
        raise BackendUnavailableError("serving needs PyTriton: pip install nvidia-pytriton (numpy < 2; use its "
                                      "own environment, see the README)") from None
    _python_libdir_first()
    log = BatchLog()
    config = TritonConfig(http_address=request.host, http_port=request.http_port, grpc_address=request.host,
                          grpc_port=request.http_port + 1, metrics_port=request.http_port + 2)
    # PyTriton creates the workspace folder itself: give it a fresh path inside ours (or its own temp one)
    triton = Triton(config=config, workspace=None if workspace is None else str(Path(workspace) / "pytriton"))
    outputs = [Tensor(name=name, dtype=np.float32, shape=(tensor.width,))
               for name, tensor in session.manifest.outputs.items()]
    outputs.append(Tensor(name=ERROR_OUTPUT, dtype=np.bytes_, shape=(1,)))
    for set_name, ids in lead_sets.items():
        infer = RequestIsolatingInfer(session, ids, log)
        triton.bind(model_name=model_name(session.model.size, session.precision, set_name), infer_func=infer,
                    inputs=[Tensor(name=SPEC.signal, dtype=np.float32, shape=(len(ids), WINDOW_SAMPLES))],
                    outputs=outputs,
                    config=ModelConfig(max_batch_size=request.max_batch,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=request.max_queue_delay_us)))
    triton.run()
    return triton, session, log


def serve_forever(request: ServeRequest) -> None:
    """``csfm-edge serve``: run until SIGTERM/Ctrl-C, then stop Triton (no orphan tritonserver)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    with tempfile.TemporaryDirectory(prefix="csfm-triton-") as workspace:
        triton, session, _ = start(request, Path(workspace))
        names = [model_name(session.model.size, session.precision, s) for s in request.lead_sets]
        print(f"serving {', '.join(names)} on http://{request.host}:{request.http_port} "
              f"(gRPC {request.http_port + 1}); Ctrl-C to stop", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            triton.stop()
            session.close()
