"""Execution backends behind one protocol; :class:`~csfm_edge.runtime.session.Session` owns the rest."""

from csfm_edge.runtime.backends.base import Backend

__all__ = ["Backend"]
