"""The PyTorch reference on CPU and CUDA: where it may run is decided from what PyTorch says of CUDA (tested
here on recorded answers), asking for a GPU that is not there is one line, never a quiet CPU run."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from csfm_edge.errors import BackendUnavailableError, ParameterError
from csfm_edge.runtime.backends import BackendOptions, reference_backend
from csfm_edge.runtime.backends.torch_ref import TorchCuda, device_problem
from csfm_edge.spec import SPEC

CPU_BUILD = TorchCuda("2.13.0+cpu", None, False, 0, False)
NO_GPU = TorchCuda("2.11.0+cu130", "13.0", False, 0, False)
H200 = TorchCuda("2.11.0+cu130", "13.0", True, 1, True)
T4 = TorchCuda("2.11.0+cu128", "12.8", True, 2, False)


def _torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_where_the_reference_may_run():
    assert device_problem(None, None, CPU_BUILD) is None and device_problem("cpu", "bf16", CPU_BUILD) is None
    assert "fp16 autocast needs the PyTorch reference on CUDA" in device_problem("cpu", "fp16", CPU_BUILD)
    assert "built without CUDA" in device_problem("cuda", None, CPU_BUILD)
    assert "2.13.0+cpu" in device_problem("cuda", None, CPU_BUILD)
    assert "finds no usable GPU" in device_problem("cuda", None, NO_GPU)
    assert device_problem("cuda", None, H200) is None and device_problem("cuda", "bf16", H200) is None
    assert "no device 2" in device_problem("cuda", None, T4, device_id=2)
    assert "no bfloat16" in device_problem("cuda", "bf16", T4) and device_problem("cuda", "fp16", T4) is None
    assert "cpu or cuda, not 'tensorrt'" in device_problem("tensorrt", None, H200)


def test_cuda_where_pytorch_has_none_is_an_error(reference_dir):
    """Session.open and the checkpoint path refuse, before loading anything; a bad autocast is a ParameterError."""
    from csfm_edge.runtime.backends.torch_ref import open_checkpoint

    if _torch_has_cuda():
        pytest.skip("this PyTorch has CUDA: the refusal is for machines without")
    with pytest.raises(BackendUnavailableError, match="PyTorch"):
        open_checkpoint(reference_dir / "csfm_micro.pth", BackendOptions(provider="cuda"))
    with pytest.raises(ParameterError, match="autocast must be one of"):
        BackendOptions(provider="cpu", autocast="int8")


def test_run_checkpoint_with_provider_cuda_is_one_line_here(tmp_path, data_dir):
    """The silent lie of issue 20: `run model.pth rec --provider cuda` ran on the CPU without a word."""
    import torch

    from csfm_edge.model import build

    if _torch_has_cuda():
        pytest.skip("this PyTorch has CUDA: the refusal is for machines without")
    checkpoint = tmp_path / "tiny.pth"
    torch.save({f"encoder.{k}": v for k, v in build("tiny", seed=3).state_dict().items()}, checkpoint)
    done = subprocess.run([sys.executable, "-m", "csfm_edge", "run", str(checkpoint), str(data_dir / "E07500.npz"),
                           "--provider", "cuda"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("csfm-edge run: error:") and "PyTorch" in line and "CUDA" in line
    assert done.stdout == ""


def test_onnx_runtime_falling_back_to_the_cpu_is_refused(tmp_path, monkeypatch):
    """ONNX Runtime starts a session on the CPU with a warning when its CUDA provider fails to load."""
    from csfm_edge.runtime.backends import onnxruntime as backend

    if "CUDAExecutionProvider" not in backend.ort.get_available_providers():
        with pytest.raises(BackendUnavailableError, match="provider 'cuda' is not available.*onnxruntime-gpu"):
            backend.choose_providers("cuda")

    class FellBack:  # onnxruntime-gpu whose CUDA libraries did not load
        def __init__(self, path, sess_options, providers):
            assert providers[0] == ("CUDAExecutionProvider", {"device_id": 0})

        def get_providers(self):
            return ["CPUExecutionProvider"]

    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(backend.ort, "get_available_providers", lambda: available)
    monkeypatch.setattr(backend.ort, "InferenceSession", FellBack)
    with pytest.raises(BackendUnavailableError, match="could not start CUDAExecutionProvider.*fell back to CPU"):
        backend.OnnxRuntimeBackend(tmp_path / "x.onnx", None, BackendOptions(provider="cuda"))


def test_autocast_on_the_cpu_reference():
    """bf16/fp16 autocast are options of the same backend (bench's torch-fast uses bf16)."""
    from csfm_edge.model import build

    feed = SPEC.example_feed(2, (1, 12), 2500)
    model = build("tiny", seed=0)
    reference = reference_backend(model).run(feed)[SPEC.features]
    fast = reference_backend(model, BackendOptions(provider="cpu", reference=True, autocast="bf16"))
    assert "bf16 autocast" in fast.describe()["provider"]
    got = fast.run(feed)[SPEC.features]
    cosine = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    assert got.dtype == np.float32 and cosine.min() > 0.99


@pytest.mark.skipif(not _torch_has_cuda(), reason="the PyTorch reference on CUDA needs a CUDA build of PyTorch and "
                                                  "an NVIDIA GPU; none here")
def test_reference_on_cuda_matches_the_cpu():
    from csfm_edge.model import build

    feed = SPEC.example_feed(4, (1, 12), 2500)
    cpu = reference_backend(build("tiny", seed=0)).run(feed)[SPEC.features]
    gpu = reference_backend(build("tiny", seed=0), BackendOptions(provider="cuda", reference=True))
    try:
        assert "TF32 off" in gpu.describe()["provider"] and gpu.describe()["gpu"]
        assert np.abs(gpu.run(feed)[SPEC.features] - cpu).max() < 1e-4
        assert gpu.gpu_compute_ms() > 0
    finally:
        gpu.close()
