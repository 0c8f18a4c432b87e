"""The tools actor: `tool.call` → `tool.result`, whatever the tool does.

Every call gets exactly one result. A call older than STALE_AFTER (a new consumer
reading the stream from the start, an actor down for long) is answered with an
error instead of being run, and a call that already has a result is skipped.

It also answers knowledge-base searches asked over NATS (`vagent docs search`): this
process already searches the knowledge base for the assistants, so no other opens its files.

Its catalog (every tool's spec) is kept in KV `vagent_tools` for the dialogue.
It is written again every REFRESH seconds: when one of several instances stops
and withdraws the catalog, the others restore it, and MCP servers that were
down at start-up join when they answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import ClassVar

from actors.base import Actor, Context
from actors.tools.builtin import current_call
from actors.tools.catalog import publish, withdraw
from actors.tools.mcp_client import McpTool
from actors.tools.toolset import Outcome, Toolset, build
from bus.client import Message, Subscription
from bus.subjects import knowledge_search
from schemas import Event, ToolCall, ToolResult
from telemetry import tracing

log = logging.getLogger("vagent.tools")

REFRESH = 30.0
STALE_AFTER = 300.0  # seconds after which a call is answered without running the tool


class Tools(Actor):
    name: ClassVar[str] = "tools"
    consumes: ClassVar[tuple[str, ...]] = ("tool.call",)
    emits: ClassVar[frozenset[str]] = frozenset({"tool.result", "error"})

    toolset: Toolset | None = None
    _refresher: asyncio.Task[None] | None = None
    _searches: Subscription | None = None

    async def setup(self) -> None:
        self.toolset = await build(self.config, self.bus, self.data_dir)
        try:
            await publish(self.bus, self.toolset.specs())
        except BaseException:
            await self.toolset.close()  # MCP servers are child processes: do not leave them
            raise
        self._refresher = asyncio.create_task(self._refresh(), name=f"{self.name}:catalog")
        # One instance of several answers each search (a queue group).
        self._searches = await self.bus.subscribe(knowledge_search(), self._search, queue=self.name)
        log.info("tools ready", extra={"actor": self.name,
                                       "tools": ",".join(sorted(self.toolset.tools))})

    async def teardown(self) -> None:
        if self._searches is not None:
            await self._searches.stop()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self.toolset is not None:
            await withdraw(self.bus, list(self.toolset.tools))
            await self.toolset.close()

    def ordering_key(self, event: Event) -> str:
        # The calls of one LLM step are independent: run them side by side.
        return event.id

    async def handle(self, event: Event, ctx: Context) -> None:
        assert isinstance(event, ToolCall)
        if event.route != "tools":
            return  # a session's own tool (a device's): its edge answers it
        assert ctx.delivery is not None  # handled events are delivered ones
        age = (time.time_ns() - event.ts) / 1e9
        if (ctx.delivery.num_delivered > 1 or age > STALE_AFTER) and await self._answered(event):
            return  # a redelivery, or a new consumer reading old calls: never run a tool twice
        if age > STALE_AFTER:
            # Whoever asked stopped waiting long ago; running it now would only cause side effects.
            outcome = Outcome(f"{event.name} was not run: the call is {age:.0f} s old", True)
        else:
            assert self.toolset is not None  # setup() ran before the first event
            token = current_call.set(event)  # for tools that read their session
            try:
                with tracing.span(f"execute_tool {event.name}", ctx.traceparent, attributes={
                        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": event.name,
                        "gen_ai.tool.call.id": event.call_id}) as span:
                    outcome = await self.toolset.run(event.name, event.arguments)
                    if outcome.is_error:
                        tracing.failed(span, outcome.content)
            finally:
                current_call.reset(token)
        await ctx.emit(ToolResult(
            session_id=event.session_id, turn_id=event.turn_id, call_id=event.call_id,
            name=event.name, content=outcome.content, is_error=outcome.is_error,
        ))

    async def _search(self, msg: Message) -> None:
        from projections.knowledge.query import answer

        if msg.reply:
            await self.bus.publish_core(msg.reply, await answer(
                msg.data, self.data_dir, self.config.knowledge.embed_threads))

    async def _answered(self, call: ToolCall) -> bool:
        entries, _ = await self.log.load("session", call.session_id)
        return any(isinstance(e.event, ToolResult) and e.event.causation_id == call.id
                   for e in entries)

    async def _refresh(self) -> None:
        toolset = self.toolset
        assert toolset is not None
        while True:
            await asyncio.sleep(REFRESH)
            try:
                for server in toolset.mcp:
                    if not any(isinstance(t, McpTool) and t.server is server
                               for t in toolset.tools.values()):
                        await toolset.add_mcp_tools(server)
                await publish(self.bus, toolset.specs())
            except Exception as exc:  # NATS away, a server still down: next round
                log.debug("catalog refresh failed: %r", exc)
