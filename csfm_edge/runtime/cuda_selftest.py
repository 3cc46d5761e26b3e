"""The CUDA layer's self-test on a real GPU: every call the TensorRT backend makes, proven before an engine is.

Through the same :mod:`csfm_edge.runtime.cuda` object the backend uses (cuda-python or PyCUDA): pinned
host <-> device round trips of float32 and int64 data; CUDA events; a captured CUDA graph replayed with a
changed input (replay must read the input's memory as it is now, not as it was captured); a capture that
fails, forced as TensorRT's enqueue failing inside one would, falling back with the stream still usable and
no error left behind; and all of it released (device memory back to where it started).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from csfm_edge.errors import CsfmError
from csfm_edge.runtime.cuda import host_array

BUFFER_BYTES = 64 << 20  # large enough that a leak shows in the device's free memory
LEAK_TOLERANCE_BYTES = 16 << 20  # other processes' allocations move the free figure a little


class SelfTestError(CsfmError):
    """The CUDA layer did something other than what the backend relies on."""


@dataclass
class Part:
    name: str
    status: str  # "pass", "fail" or "skipped"
    detail: str


@dataclass
class _Resources:
    """Everything the test made, released in one place whatever failed."""

    device: list[int] = field(default_factory=list)
    host: list[int] = field(default_factory=list)
    graphs: list = field(default_factory=list)
    events: list = field(default_factory=list)
    stream: int | None = None


def _round_trip(api, stream: int, device: int, host: int, dtype: np.dtype, count: int, rng) -> None:
    """Host -> device -> host through pinned memory, the host copy wiped in between."""
    dtype = np.dtype(dtype)
    view = host_array(host, (count,), dtype)
    data = rng.standard_normal(count).astype(dtype) if dtype.kind == "f" else \
        rng.integers(-(2**62), 2**62, count, dtype=dtype)
    view[...] = data
    api.copy_to_device(device, host, count * dtype.itemsize, stream)
    api.synchronize(stream)
    view[...] = 0
    api.copy_to_host(host, device, count * dtype.itemsize, stream)
    api.synchronize(stream)
    if not np.array_equal(view, data):
        wrong = int(np.count_nonzero(view != data))
        raise SelfTestError(f"{dtype.name} round trip changed {wrong} of {count} values")


def _run(parts: list[Part], name: str, test: Callable[[], str]) -> bool:
    try:
        parts.append(Part(name, "pass", test()))
    except CsfmError as exc:
        parts.append(Part(name, "fail", str(exc).splitlines()[0]))
    return parts[-1].status == "pass"


def self_test(api, nbytes: int = BUFFER_BYTES, seed: int = 0) -> list[Part]:
    """Run every part on ``api`` (from :func:`csfm_edge.runtime.cuda.cuda_api`); each passes, fails with why,
    or is skipped with why. Nothing is left allocated afterwards, even when a part fails."""
    rng = np.random.default_rng(seed)
    parts: list[Part] = []
    made = _Resources()
    with api.activate():
        free_before, total = api.memory_info()
        try:
            made.stream = api.stream()
            for _ in range(3):  # input, output, spare
                made.device.append(api.device_alloc(nbytes))
                made.host.append(api.host_alloc(nbytes))
            _parts(api, made, nbytes, rng, parts)
        except CsfmError as exc:  # an allocation or the stream itself failed: the rest cannot run
            parts.append(Part("allocation", "fail", str(exc).splitlines()[0]))
        finally:
            _release(api, made)
        free_after, _ = api.memory_info()
    lost = free_before - free_after
    parts.append(Part("released", "pass" if lost <= LEAK_TOLERANCE_BYTES else "fail",
                      f"device memory free {free_before / 2**20:.0f} MiB before, {free_after / 2**20:.0f} MiB after "
                      f"(of {total / 2**30:.1f} GiB; {3 * nbytes / 2**20:.0f} MiB device + as much pinned host "
                      "memory were allocated and freed)"))
    return parts


def _release(api, made: _Resources) -> None:
    if made.stream is not None:
        try:
            api.synchronize(made.stream)
        except CsfmError:
            pass  # free what can be freed all the same
    api.free(made.device, made.host, made.stream, tuple(made.graphs), tuple(made.events))


def _parts(api, made: _Resources, nbytes: int, rng, parts: list[Part]) -> None:
    stream, (dev_a, dev_b, _), (host_a, host_b, host_c) = made.stream, made.device, made.host
    count32, count64 = nbytes // 4, nbytes // 8

    def round_trips() -> str:
        _round_trip(api, stream, dev_a, host_a, np.float32, count32, rng)
        _round_trip(api, stream, dev_b, host_b, np.int64, count64, rng)
        return f"float32 and int64, {nbytes / 2**20:.0f} MiB each, through pinned memory: identical"

    def events() -> str:
        made.events.extend([api.event(), api.event()])
        start, end = made.events
        api.record(start, stream)
        api.copy_to_device(dev_a, host_a, nbytes, stream)
        api.record(end, stream)
        ms = api.elapsed_ms(start, end)
        if not (math.isfinite(ms) and ms > 0):
            raise SelfTestError(f"events around a {nbytes / 2**20:.0f} MiB copy measured {ms} ms")
        return f"{nbytes / 2**20:.0f} MiB host-to-device copy timed between events: {ms:.3f} ms " \
               f"({nbytes / ms / 1e6:.1f} GB/s)"

    if not _run(parts, "round trips", round_trips):
        return
    _run(parts, "events", events)
    if api.name != "cuda-python":
        reason = f"{api.name} has no stream capture here (the TensorRT backend launches plainly with it)"
        parts += [Part("graph capture and replay", "skipped", reason), Part("failed capture", "skipped", reason)]
        return

    def capture_and_replay() -> str:
        view_in, view_out = host_array(host_a, (count32,), np.float32), host_array(host_c, (count32,), np.float32)
        view_in[...] = 1.0
        if not api.begin_capture(stream):
            raise SelfTestError("CUDA refused to start a capture on a fresh stream")
        api.copy_to_device(dev_a, host_a, nbytes, stream)  # the work: input -> device -> output
        api.copy_to_host(host_c, dev_a, nbytes, stream)
        graph = api.end_capture(stream, True)
        if graph is None:
            raise SelfTestError("capturing two copies produced no graph")
        made.graphs.append(graph)
        for trial in range(3):  # the input changes between replays: each replay must read it anew
            data = rng.standard_normal(count32).astype(np.float32)
            view_in[...], view_out[...] = data, 0.0
            api.launch_graph(graph, stream)
            api.synchronize(stream)
            if not np.array_equal(view_out, data):
                raise SelfTestError(f"replay {trial + 1} did not carry the changed input through")
        return "copies captured once, replayed 3 times with a new input each time: outputs follow the input"

    def failed_capture() -> str:
        def ended(enqueued: bool, what: str) -> None:
            graph = api.end_capture(stream, enqueued)
            if graph is not None:
                made.graphs.append(graph)
                raise SelfTestError(f"{what} produced a graph")

        if not api.begin_capture(stream):
            raise SelfTestError("CUDA refused to start a capture on a fresh stream")
        api.copy_to_device(dev_b, host_b, nbytes, stream)
        ended(False, "a capture whose enqueue failed (as TensorRT's can)")
        api.begin_capture(stream)
        try:
            api.synchronize(stream)  # not permitted while capturing: invalidates the capture
        except CsfmError:
            pass
        ended(True, "a capture invalidated by a synchronize inside it")
        if api.last_error() is not None:
            raise SelfTestError(f"an error is left behind after the failed capture: {api.last_error()}")
        _round_trip(api, stream, dev_b, host_b, np.float32, count32, rng)
        return ("an enqueue failing inside a capture, and a capture invalidated by a synchronize, both end with no "
                "graph and no error left; the stream then copies correctly")

    _run(parts, "graph capture and replay", capture_and_replay)
    _run(parts, "failed capture", failed_capture)
