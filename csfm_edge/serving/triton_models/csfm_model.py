"""Triton Python-backend model: CSFM itself, a csfm-edge ``Session`` on the artifact beside this file.

Written into a repository by ``csfm-edge triton-repo --platform python`` for servers without the
ONNX Runtime or TensorRT backend (CPU servers, gateways, PyTriton's bundled server). Triton's dynamic
batcher hands ``execute`` several requests; they run as one batch, and a bad one gets its own error.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from csfm_edge.leads import lead_set
from csfm_edge.runtime.session import Session
from csfm_edge.serving.requests import score_requests
from csfm_edge.spec import SPEC


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        provider = params["provider"]["string_value"] or None
        self.ids = np.asarray(lead_set(params["lead_set"]["string_value"]), dtype=np.int64)
        # a key written by triton-repo --trust, else the server's $CSFM_EDGE_TRUST: the signature is checked here
        trust = params.get("trust", {}).get("string_value") or None
        self.session = Session.open(Path(__file__).parent / params["artifact"]["string_value"], provider=provider,
                                    trust=trust)

    def execute(self, requests):
        signals = [pb_utils.get_input_tensor_by_name(r, SPEC.signal).as_numpy() for r in requests]
        responses = []
        for answer in score_requests(self.session, self.ids, signals):
            if answer.outputs is None:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(answer.error)))
            else:
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor(name, value) for name, value in answer.outputs.items()]))
        return responses

    def finalize(self):
        self.session.close()
