"""CSFM's channel-type table: lead names, aliases and ids (0-11 = 12-lead ECG, 12 = PPG).

Torch-free, so the runtime, the exporter and the model all share one table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from csfm_edge.errors import LeadError

LEAD_NAMES: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6", "PPG",
)
PPG_ID = 12
NUM_CHANNEL_TYPES = len(LEAD_NAMES)

# Names recorders use for a lead CSFM knows. MLII is the MIT-BIH modified lead II; PLETH is the
# plethysmogram channel of bedside monitors (PhysioNet, Philips, GE); SpO2 Pleth that of EDF exports.
ALIASES: dict[str, int] = {"MLII": 1, "ML2": 1, "PLETH": PPG_ID, "PLETH.": PPG_ID, "SPO2 PLETH": PPG_ID,
                           "PLETHYSMOGRAM": PPG_ID}
# Vendor prefixes in front of a lead name: "ECG II", "EKG-V1", "Lead aVR", "ECG Lead II".
VENDOR_PREFIX = re.compile(r"^(?:(?:ECG|EKG)[\s_\-:.]*)?(?:LEAD[\s_\-:.]*)?")

_BY_NAME: dict[str, int] = {name.upper(): i for i, name in enumerate(LEAD_NAMES)}
_BY_NAME.update({alias.upper(): i for alias, i in ALIASES.items()})

# Named lead sets used by exports, profiles, benchmarks and serving.
LEAD_SETS: dict[str, tuple[int, ...]] = {
    "ii": (1,),
    "ppg": (PPG_ID,),
    "ii+ppg": (1, PPG_ID),
    "12lead": tuple(range(12)),
    "12lead+ppg": tuple(range(13)),
}


def lead_id(lead: str | int) -> int:
    """One lead name (case-insensitive, aliases accepted) or CSFM id -> id."""
    if isinstance(lead, (int, np.integer)) and not isinstance(lead, bool):
        if 0 <= int(lead) < NUM_CHANNEL_TYPES:
            return int(lead)
        raise LeadError(f"lead id {int(lead)} is outside CSFM's table 0..{NUM_CHANNEL_TYPES - 1}")
    if isinstance(lead, str):
        key = lead.strip().upper()
        if key in _BY_NAME:
            return _BY_NAME[key]
        if key.isdigit():  # an id as text ("1", "12"), as the command line takes it
            return lead_id(int(key))
        raise LeadError(
            f"unknown lead {lead!r}; CSFM knows {', '.join(LEAD_NAMES)} "
            f"(aliases {', '.join(ALIASES)}) or ids 0..{NUM_CHANNEL_TYPES - 1}"
        )
    raise LeadError(f"a lead is a name or an integer id, not {type(lead).__name__}")


def resolve_leads(leads: str | int | Sequence[str | int]) -> np.ndarray:
    """Lead names/ids (or a named lead set such as ``ii+ppg``) -> int64 ids, refusing duplicates."""
    if isinstance(leads, str) and leads.strip().lower() in LEAD_SETS:
        return np.asarray(LEAD_SETS[leads.strip().lower()], dtype=np.int64)
    if isinstance(leads, (str, int, np.integer)):
        leads = [leads]
    ids = [lead_id(lead) for lead in leads]
    if not ids:
        raise LeadError("no leads given")
    seen: dict[int, int] = {}
    for position, i in enumerate(ids):
        if i in seen:
            raise LeadError(
                f"duplicate lead {LEAD_NAMES[i]} (positions {seen[i]} and {position}); "
                "each CSFM channel type may appear once"
            )
        seen[i] = position
    return np.asarray(ids, dtype=np.int64)


def lead_names(ids) -> list[str]:
    """CSFM ids -> canonical names, for messages and manifests."""
    return [LEAD_NAMES[int(i)] for i in ids]


def lead_set(name: str) -> tuple[int, ...]:
    """A named lead set (``ii+ppg``, ``12lead``, ...) -> its CSFM ids; an unknown name lists the sets."""
    key = str(name).strip().lower()
    if key not in LEAD_SETS:
        raise LeadError(f"unknown lead set {name!r}; choose from {', '.join(LEAD_SETS)}")
    return LEAD_SETS[key]


def rows_of(channel_ids: Sequence[int] | np.ndarray, wanted: Sequence[int] | np.ndarray) -> list[int]:
    """The row of each wanted CSFM id in a record whose rows carry ``channel_ids``."""
    ids = [int(i) for i in np.asarray(channel_ids).ravel()]
    missing = [LEAD_NAMES[int(i)] for i in wanted if int(i) not in ids]
    if missing:
        present = ", ".join(lead_names(i for i in ids if i >= 0))
        raise LeadError(f"the record has no lead {', '.join(missing)} (it has {present})")
    return [ids.index(int(i)) for i in wanted]


def strip_label(label: str | bytes) -> str:
    """A label as files spell it, bytes decoded and its BOM, quotes and outer spaces stripped."""
    if isinstance(label, (bytes, np.bytes_)):
        label = bytes(label).decode("utf-8", errors="replace")
    return str(label).replace("\ufeff", "").strip().strip("'\"").strip()


def clean_label(label: str | bytes) -> str:
    """A comparable key for a label: :func:`strip_label`, inner runs of spaces/underscores folded, upper case."""
    return re.sub(r"[\s_]+", " ", strip_label(label)).upper()


def vendor_lead(label: str | bytes, lead_map: Mapping[str, str] | None = None) -> int | None:
    """The CSFM id of a recorder's channel label ("ECG II", "EKG V1", "Lead aVR", "Pleth", "SpO2 Pleth",
    b"MLII", ...), case- and space-insensitive; ``lead_map`` (label -> lead) first. None: not a CSFM lead."""
    key = clean_label(label)
    mapped = {clean_label(k): v for k, v in (lead_map or {}).items()}
    if key in mapped:
        return lead_id(str(mapped[key]))
    for candidate in (key, VENDOR_PREFIX.sub("", key)):
        if candidate in _BY_NAME:
            return _BY_NAME[candidate]
    return None
