"""TensorRT optimization profiles: named min/opt/max shapes for the deployments CSFM sees.

Narrow ranges give fast kernels, so each preset covers one kind of deployment with its opt shape at
the usual case; an engine may carry several. The runtime picks the narrowest profile that contains
an input's shape. Time is fixed at the 10-s window: the preprocessing pads shorter records to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from csfm_edge.config import WINDOW_SAMPLES
from csfm_edge.errors import CsfmError, WindowLengthError
from csfm_edge.leads import NUM_CHANNEL_TYPES
from csfm_edge.spec import SPEC, AxisRange, check_window_length


@dataclass(frozen=True)
class Profile:
    name: str
    batch: AxisRange
    channels: AxisRange
    time: AxisRange
    description: str = ""

    def shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Per input: (min, opt, max) shapes, as ``IOptimizationProfile.set_shape`` takes them."""
        b, c, t = self.batch, self.channels, self.time
        return {SPEC.signal: ((b.min, c.min, t.min), (b.opt, c.opt, t.opt), (b.max, c.max, t.max)),
                SPEC.channel_ids: ((c.min,), (c.opt,), (c.max,))}

    def contains(self, batch: int, channels: int, time: int) -> bool:
        return self.batch.contains(batch) and self.channels.contains(channels) and self.time.contains(time)

    def volume(self) -> int:
        return (self.batch.max - self.batch.min + 1) * (self.channels.max - self.channels.min + 1) * \
            (self.time.max - self.time.min + 1)


def _fixed(value: int) -> AxisRange:
    return AxisRange(value, value, value)


TEN_SECONDS = _fixed(WINDOW_SAMPLES)
PRESETS: dict[str, Profile] = {
    "wearable": Profile("wearable", _fixed(1), AxisRange(1, 2, 2), TEN_SECONDS,
                        "one patient, lead II and/or PPG, 10-s windows (wearable gateway)"),
    "bedside": Profile("bedside", AxisRange(1, 4, 8), AxisRange(1, 2, 3), TEN_SECONDS,
                       "a monitor's beds, up to 3 channels (ECG leads + PPG)"),
    "clinic": Profile("clinic", AxisRange(1, 8, 16), _fixed(12), TEN_SECONDS, "12-lead resting ECG, batch 1-16"),
    "server": Profile("server", AxisRange(1, 32, 64), AxisRange(1, 12, NUM_CHANNEL_TYPES), TEN_SECONDS,
                      "many patients at once, any lead set, batch up to 64"),
}


def _axis(text: str, axis: str) -> AxisRange:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise CsfmError(f"profile {axis} {text!r}: expected N or MIN,OPT,MAX integers") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise CsfmError(f"profile {axis} {text!r}: need 1 <= min <= opt <= max")
    return AxisRange(*values)


def parse_profile(text: str) -> Profile:
    """A preset name, or ``NAME:batch=MIN,OPT,MAX:channels=...:time=...`` (omitted axes: 1 / 1-13 / 2500)."""
    if text in PRESETS:
        return PRESETS[text]
    name, *fields = text.split(":")
    if not fields:
        raise CsfmError(f"unknown profile {text!r}; presets: {', '.join(PRESETS)}, or "
                        "NAME:batch=MIN,OPT,MAX:channels=MIN,OPT,MAX:time=MIN,OPT,MAX")
    axes = {"batch": _fixed(1), "channels": AxisRange(1, 2, NUM_CHANNEL_TYPES), "time": TEN_SECONDS}
    for field in fields:
        key, _, value = field.partition("=")
        if key not in axes:
            raise CsfmError(f"profile field {key!r} unknown; use batch, channels, time")
        axes[key] = _axis(value, key)
    if axes["channels"].max > NUM_CHANNEL_TYPES:
        raise CsfmError(f"profile channels up to {NUM_CHANNEL_TYPES} (CSFM's channel table)")
    t = axes["time"]
    try:
        for value in (t.min, t.opt, t.max):
            check_window_length(value)
    except WindowLengthError as exc:
        raise CsfmError(f"profile time: {exc}") from None
    return Profile(name, axes["batch"], axes["channels"], axes["time"], "custom")


def select_profile(profiles: list[Profile], batch: int, channels: int, time: int) -> int:
    """Index of the narrowest profile containing the shape; a shape outside all is refused."""
    fitting = [i for i, p in enumerate(profiles) if p.contains(batch, channels, time)]
    if not fitting:
        ranges = "; ".join(f"{p.name}: batch {p.batch.min}-{p.batch.max}, channels {p.channels.min}-"
                           f"{p.channels.max}, time {p.time.min}-{p.time.max}" for p in profiles)
        raise CsfmError(f"input [batch {batch}, channels {channels}, time {time}] fits no profile of this "
                        f"engine ({ranges}); rebuild with a profile that covers it")
    return min(fitting, key=lambda i: profiles[i].volume())


def probe_shape(profiles: list[Profile] | None) -> tuple[int, int, int]:
    """(batch, channels, time) of a probe inference every profile-less artifact and every engine accepts:
    one 10-s window of one channel, or the smallest shape of an engine's first profile."""
    if not profiles:
        return 1, 1, WINDOW_SAMPLES
    first = profiles[0]
    return first.batch.min, first.channels.min, first.time.max
