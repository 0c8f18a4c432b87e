"""What the edge's request handlers share: the bus, settings and the command services."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.client import Bus
from domain.accounts import Accounts
from domain.assistants import Assistants
from domain.devices import Devices
from domain.keys import signing_key
from domain.tokens import Tokens
from edge.api.ratelimit import RateLimiter
from edge.realtime.leases import SessionLeases
from edge.realtime.limits import AddressRates, AddressSlots, turn_rates
from edge.realtime.session import LinkRegistry
from projections.client import run_query
from settings.config import Config


@dataclass
class Services:
    bus: Bus
    config: Config
    data_dir: Path
    tokens: Tokens = field(init=False)
    accounts: Accounts = field(init=False)
    assistants: Assistants = field(init=False)
    devices: Devices = field(init=False)
    limiter: RateLimiter = field(init=False)
    links: LinkRegistry = field(init=False)  # the real-time sessions this edge holds
    # real-time connections per client address (edge.max_sessions_per_address)
    addresses: AddressSlots = field(default_factory=AddressSlots)
    # typed turns per client address, all its sessions together (edge.max_turns_per_address_second)
    turns: AddressRates = field(init=False)
    draining: bool = False  # shutting down: no new real-time connections

    def __post_init__(self) -> None:
        auth = self.config.auth
        self.tokens = Tokens(self.bus, signing_key(auth, self.data_dir), auth)
        self.accounts = Accounts(self.bus, self.tokens, auth,
                                 persona=self.config.dialogue.system_prompt)
        self.assistants = Assistants(self.bus, self.config)
        self.devices = Devices(self.bus, self.tokens, auth)
        self.limiter = RateLimiter(auth.rate_limit, auth.rate_window)
        self.links = LinkRegistry(SessionLeases(self.bus, self.data_dir))
        self.turns = turn_rates(self.config.edge)

    async def query(self, name: str, **params: Any) -> list[dict[str, Any]]:
        """Rows of a read query, after the read model caught up with every stored event
        (so a client always reads its own writes)."""
        columns, rows = await run_query(self.bus, self.data_dir, name, params, fresh=True)
        return [dict(zip(columns, row, strict=True)) for row in rows]
