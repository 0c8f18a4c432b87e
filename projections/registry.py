"""Every read model vagent keeps."""

from __future__ import annotations

from projections.base import Projection
from projections.sessions import Sessions

PROJECTIONS: tuple[type[Projection], ...] = (Sessions,)
