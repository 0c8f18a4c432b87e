"""Every read model vagent keeps."""

from __future__ import annotations

from projections.assistants import Assistants
from projections.base import Projection
from projections.devices import Devices
from projections.sessions import Sessions
from projections.users import Users

PROJECTIONS: tuple[type[Projection], ...] = (Sessions, Users, Assistants, Devices)
