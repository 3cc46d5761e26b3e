"""Triton Python-backend model: a raw signal at its own rate -> the CSFM input [channels, 2500].

Written into a repository by ``csfm-edge triton-repo --preprocess``; the lead names and PPG filter
order come from the model's ``config.pbtxt`` parameters.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from csfm_edge.runtime.preprocess import preprocess
from csfm_edge.serving.requests import one_line
from csfm_edge.spec import SPEC


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.leads = params["leads"]["string_value"].split(",")
        self.ppg_order = int(params["ppg_order"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "raw").as_numpy()
            fs = pb_utils.get_input_tensor_by_name(request, "fs").as_numpy()
            try:
                out = np.stack([preprocess(raw[i], float(fs[i][0]), self.leads, ppg_order=self.ppg_order)
                                for i in range(raw.shape[0])])
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(SPEC.signal, out)]))
            except Exception as exc:  # a bad signal is this request's error; the model keeps serving
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(one_line(exc))))
        return responses
