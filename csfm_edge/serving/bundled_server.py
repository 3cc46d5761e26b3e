"""``csfm-edge serve --repository DIR``: the Triton server PyTriton bundles, run on a generated repository.

``nvidia-pytriton`` ships a ``tritonserver`` binary with the Python backend only (no ONNX Runtime or
TensorRT backend), so it serves repositories written with ``triton-repo --platform python`` (and their
``--preprocess`` ensembles) on any x86-64 Linux machine without the NGC container. Running it by hand
takes what PyTriton does internally: a backend folder with the Python-backend stub for this interpreter,
the bundled libraries and this interpreter's ``libpython`` on ``LD_LIBRARY_PATH``, and this environment
first on ``PATH`` (the stub's embedded Python finds its ``site-packages``, and csfm-edge, from there).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from csfm_edge.errors import BackendUnavailableError, CsfmError
from csfm_edge.runtime.trust import TRUST_ENV, resolve_trust, verify_artifact
from csfm_edge.serving.ports import check_ports

BUNDLED_BACKENDS = {"python", "ensemble"}  # what the bundled server can run; other models need the NGC container


@dataclass
class RepositoryServeRequest:
    repository: Path
    http_port: int = 8000  # gRPC: +1, metrics: +2 (as ``serve ARTIFACT``)
    host: str = "127.0.0.1"
    ready_timeout_s: float = 300.0
    trust: Path | None = None  # every model's artifact must be signed by this key (checked here and at load)


def tritonserver_dist() -> Path:
    """The folder holding PyTriton's ``bin/tritonserver``, ``backends/`` and ``python_backend_stubs/``."""
    spec = find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("the bundled Triton server comes with nvidia-pytriton: pip install "
                                      "nvidia-pytriton (numpy < 2; its own environment, see the README)")
    dist = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise BackendUnavailableError(f"nvidia-pytriton at {dist.parent} has no bundled tritonserver")
    return dist


def repository_models(repository: Path) -> dict[str, str]:
    """Model name -> its backend or platform, from each ``config.pbtxt`` of the repository."""
    if repository.exists() and not repository.is_dir():
        raise CsfmError(f"model repository {repository} is a file, not a folder (write one with csfm-edge "
                        "triton-repo)")
    if not repository.is_dir():
        raise CsfmError(f"model repository {repository} does not exist")
    models = {}
    for config in sorted(repository.glob("*/config.pbtxt")):
        try:
            text = config.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CsfmError(f"{config} cannot be read ({exc})") from None
        found = re.search(r'^\s*(?:backend|platform)\s*:\s*"([^"]+)"', text, re.MULTILINE)
        if found is None:
            raise CsfmError(f"{config} names no backend or platform: not a Triton model configuration")
        models[config.parent.name] = found.group(1)
    if not models:
        raise CsfmError(f"{repository} holds no model (no <name>/config.pbtxt): write one with csfm-edge triton-repo")
    return models


def repository_artifacts(repository: Path) -> list[Path]:
    """The artifact each Python-backend CSFM model of the repository opens (its ``artifact`` parameter)."""
    found = []
    for config in sorted(repository.glob("*/config.pbtxt")):
        named = re.search(r'key:\s*"artifact"\s*value:\s*\{\s*string_value:\s*"([^"]+)"', config.read_text())
        if named:
            found.append(config.parent / "1" / named.group(1))
    return found


def check_bundled_can_serve(models: dict[str, str]) -> None:
    """Refuse, before starting anything, a repository whose models need backends the bundled server lacks."""
    others = {name: kind for name, kind in models.items() if kind not in BUNDLED_BACKENDS}
    if others:
        listed = ", ".join(f"{n} ({k})" for n, k in sorted(others.items()))
        raise CsfmError(f"the bundled Triton server has only the Python backend and cannot serve {listed}: write the "
                        "repository with --platform python, or run it in the NGC Triton container (README)")


def prepare_backends(dist: Path, workspace: Path) -> Path:
    """``workspace/backends/python`` with the Python-backend stub built for this interpreter."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise BackendUnavailableError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    backends = workspace / "backends"
    shutil.copytree(dist / "backends" / "python", backends / "python", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    return backends


def server_environment(dist: Path) -> dict[str, str]:
    """The server's environment: bundled libraries, this libpython, and this environment's Python first."""
    env = os.environ.copy()
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(dist.parents[1] / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [*libs, env.get("LD_LIBRARY_PATH", "")] if p)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    package_root = str(Path(__file__).resolve().parents[2])  # csfm_edge importable even if not installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in [package_root, env.get("PYTHONPATH", "")] if p)
    return env


def server_command(dist: Path, repository: Path, backends: Path, request: RepositoryServeRequest) -> list[str]:
    port = request.http_port
    return [str(dist / "bin" / "tritonserver"), f"--model-repository={repository.resolve()}",
            f"--backend-directory={backends}", f"--http-address={request.host}", f"--http-port={port}",
            f"--grpc-address={request.host}", f"--grpc-port={port + 1}", f"--metrics-address={request.host}",
            f"--metrics-port={port + 2}", "--exit-on-error=true", "--log-info=true"]


class BundledServer:
    """The bundled ``tritonserver`` on a repository: started in its own process group, stopped with it.

    ``log`` None lets the server write to this process's terminal; a path collects it there instead.
    """

    def __init__(self, request: RepositoryServeRequest, log: Path | None = None):
        self.request = request
        self.log = log
        check_bundled_can_serve(repository_models(request.repository))
        check_ports(request.host, request.http_port)
        if resolve_trust(request.trust) is not None:  # refused before the server starts, in one line
            for artifact in repository_artifacts(request.repository):
                verify_artifact(artifact, request.trust)
        self.dist = tritonserver_dist()
        self.process: subprocess.Popen | None = None
        self._workspace: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"{self.request.host}:{self.request.http_port}"

    def start(self) -> BundledServer:
        self._workspace = tempfile.TemporaryDirectory(prefix="csfm-tritonserver-")
        backends = prepare_backends(self.dist, Path(self._workspace.name))
        output = None if self.log is None else open(self.log, "ab")  # noqa: SIM115 (closed with the process)
        try:
            self.process = subprocess.Popen(
                server_command(self.dist, self.request.repository, backends, self.request),
                env=self._environment(), stdout=output, stderr=subprocess.STDOUT if output else None,
                start_new_session=True)
        finally:
            if output is not None:
                output.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _environment(self) -> dict[str, str]:
        """The server's environment, with the trust anchor the Python-backend models check their artifacts with."""
        env = server_environment(self.dist)
        anchor = resolve_trust(self.request.trust)
        if anchor is not None:
            env[TRUST_ENV] = str(anchor.resolve())
        return env

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.request.ready_timeout_s
        url = f"http://{self.url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CsfmError(f"tritonserver exited with {self.process.returncode} while loading "
                                f"{self.request.repository}{self._log_hint()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise CsfmError(f"tritonserver not ready after {self.request.ready_timeout_s:.0f} s{self._log_hint()}")

    def _log_hint(self) -> str:
        if self.log is None or not self.log.is_file():
            return " (its log is above)"
        errors = [line for line in self.log.read_text(errors="replace").splitlines() if line.startswith("E")]
        return f": {errors[-1]}" if errors else f" (log: {self.log})"

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (Triton unloads its models and stops their stubs), then nothing of the group is left."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # stubs that outlived the server, if any
            except (ProcessLookupError, PermissionError):
                pass
            code = self.process.wait()
        if self._workspace is not None:
            self._workspace.cleanup()
            self._workspace = None
        return code

    def __enter__(self) -> BundledServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_repository_forever(request: RepositoryServeRequest) -> None:
    """``csfm-edge serve --repository``: run until SIGTERM/Ctrl-C, then stop the server and its stubs."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    server = BundledServer(request)  # refuses an unservable repository before anything changes
    signal.signal(signal.SIGTERM, interrupt)
    try:
        server.start()
        names = ", ".join(repository_models(request.repository))
        print(f"serving {names} on http://{server.url} (gRPC {request.http_port + 1}); Ctrl-C to stop", flush=True)
        while server.process.poll() is None:
            time.sleep(1.0)
        raise CsfmError(f"tritonserver stopped on its own (exit code {server.process.returncode}); see its log above")
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
