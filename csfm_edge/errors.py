"""Every error csfm-edge raises on purpose, in one module.

All derive from :class:`CsfmError`; the CLI prints such an error as one line and exits non-zero, so
anything a user can cause must be one of these and never a bare traceback. Signal errors also derive
from ``ValueError`` so generic callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations


class CsfmError(Exception):
    """Base of every user-facing csfm-edge error."""


# --- signals and leads -------------------------------------------------------------------------


class SignalError(CsfmError, ValueError):
    """The signal cannot be preprocessed; ``channel`` names the offending lead when there is one."""

    def __init__(self, message: str, channel: str | None = None):
        self.channel = channel
        super().__init__(f"channel {channel}: {message}" if channel is not None else message)


class ShapeError(SignalError):
    """Wrong rank, or signal rows that do not match the leads given."""


class SampleRateError(SignalError):
    """Sampling rate not a finite positive number."""


class TooShortError(SignalError):
    """Fewer samples than the minimum the filters and the model need."""


class NonFiniteError(SignalError):
    """NaN or inf in a gap longer than the interpolation limit."""


class FlatChannelError(SignalError):
    """A channel without variation (lead off, disconnected sensor): z-scoring it would divide by ~0."""


class NoSignalError(SignalError):
    """No lead of a record (or of a stream window) carries signal: nothing can be scored.

    ``dropped`` lists the leads and why each was unusable."""

    dropped: list = []


class ImplausibleSignalError(SignalError):
    """Values no recorder produces (overflowing magnitudes, booleans): wrong units or a corrupt file."""


class LeadError(CsfmError, ValueError):
    """Unknown or duplicate lead name or id."""


class WindowLengthError(CsfmError, ValueError):
    """A model input whose time axis is not a multiple of the patch length within the window."""


class ParameterError(CsfmError, ValueError):
    """An argument outside its range (hop, batch size, stream window): says which and what is allowed."""


# --- checkpoints, artifacts and backends -------------------------------------------------------


class CheckpointError(CsfmError):
    """A file that is not a CSFM checkpoint, or not the size asked for."""


class ArtifactError(CsfmError):
    """An exported artifact whose manifest is missing, corrupt or does not match the file."""


class TrustError(ArtifactError):
    """An artifact whose signature is missing, does not match it, or was made with another key than the trusted
    one; or a signing key or trust anchor that cannot be used."""


class VerificationError(CsfmError):
    """An artifact that misses its tolerance against the PyTorch reference."""


class BackendUnavailableError(CsfmError):
    """A backend library or device that is not installed or present on this machine."""


class ClusterError(CsfmError):
    """A Ray cluster that cannot be reached, or that lacks the resources a run asks of it."""


class InputFileError(CsfmError):
    """An input recording that cannot be read."""


class OutputError(CsfmError):
    """An output that would overwrite an input, an artifact or an existing file, or cannot be written."""


# --- warnings ----------------------------------------------------------------------------------


class SignalWarning(UserWarning):
    """Something was done to the signal that the caller should know about (gaps filled, padding)."""
