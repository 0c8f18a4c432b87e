"""Every read model vagent keeps."""

from __future__ import annotations

from projections.assistants import Assistants
from projections.base import Projection
from projections.devices import Devices
from projections.documents import Documents
from projections.messages import Messages
from projections.sessions import Sessions
from projections.turns import Turns
from projections.users import Users

PROJECTIONS: tuple[type[Projection], ...] = (Sessions, Users, Assistants, Devices, Turns, Messages,
                                                Documents)
