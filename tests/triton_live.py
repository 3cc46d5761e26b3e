"""Live PyTriton check, run by tests/test_serving.py inside .venv-triton (PyTriton needs numpy < 2).

Serves a csfm-edge ONNX Runtime session on 127.0.0.1, sends a bounded number of concurrent requests
from tritonclient, then bad requests, and prints one JSON line of what it saw.
Usage: python tests/triton_live.py ARTIFACT DATA_DIR PORT
"""

from __future__ import annotations

import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from csfm_edge.recordings.datasets import lead_set_batches, real_batch
from csfm_edge.runtime.backends import BackendOptions
from csfm_edge.serving.pytriton_server import ServeRequest, start
from csfm_edge.serving.triton_repo import model_name

REQUESTS, CLIENTS = 64, 32
BAD = (7, 40)  # these requests carry a NaN run


def main() -> None:
    artifact, data_dir, port = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    url = f"127.0.0.1:{port}"
    ids = [1, 12]
    with tempfile.TemporaryDirectory(prefix="csfm-triton-") as workspace:
        triton, session, log = start(ServeRequest(artifact, ["ii+ppg"], port, max_batch=16, max_queue_delay_us=20000,
                                                  options=BackendOptions(provider="cpu")), Path(workspace))
        name = model_name(session.model.size, session.precision, "ii+ppg")
        try:
            windows = real_batch(lead_set_batches(data_dir), ids, REQUESTS)
            windows += np.linspace(0, 0.01, REQUESTS, dtype=np.float32)[:, None, None]  # every request distinct
            expected = session.run(windows, ids)["features"]
            sent = windows.copy()
            sent[BAD, 1, 100:300] = np.nan  # requests with a NaN run, sent among the good ones

            def infer(i: int, data: np.ndarray | None = None, model: str = name, full: bool = False):
                client = http.InferenceServerClient(url, network_timeout=120.0, connection_timeout=30.0)
                try:
                    data = sent[i: i + 1] if data is None else data
                    tensor = http.InferInput("signal", list(data.shape), "FP32" if data.dtype == np.float32 else "FP64")
                    tensor.set_data_from_numpy(data)
                    result = client.infer(model, [tensor])
                    features = result.as_numpy("features")[0]
                    return (features, result.as_numpy("error")[0][0].decode()) if full else features
                finally:
                    client.close()

            with ThreadPoolExecutor(CLIENTS) as pool:
                answers = list(pool.map(lambda i: infer(i, full=True), range(REQUESTS), timeout=300))
            good = [i for i in range(REQUESTS) if i not in BAD]
            served = np.stack([answers[i][0] for i in good])
            bad_errors = [answers[i][1] for i in BAD]
            good_errors = [answers[i][1] for i in good]
            errors = {}
            for case, kwargs in {"wrong_shape": {"data": np.zeros((1, 3, 2500), np.float32)},
                                 "wrong_dtype": {"data": np.zeros((1, 2, 2500), np.float64)},
                                 "lead_set_not_served": {"model": model_name(session.model.size, session.precision,
                                                                             "12lead")}}.items():
                try:
                    infer(0, **kwargs)
                    errors[case] = None
                except InferenceServerException as exc:
                    errors[case] = str(exc)[:200]
            after_errors = np.abs(infer(5) - expected[5]).max()
        finally:
            triton.stop()
    print(json.dumps({"requests": REQUESTS, "max_abs_vs_session": float(np.abs(served - expected[good]).max()),
                      "batch_sizes": sorted(set(log.sizes)), "largest_batch": max(log.sizes),
                      "errors": errors, "max_abs_after_errors": float(after_errors),
                      "bad_request_errors": bad_errors, "good_request_errors": sorted(set(good_errors)),
                      "mixed_batches": log.mixed}))


if __name__ == "__main__":
    main()
