"""The daemon on the rig with its echo path, and a way to make the assistant speak with nobody talking.

:class:`EchoDaemon` is the end-to-end harness's :class:`~tests.e2e.harness.DaemonUnderTest` that also keeps
the realtime link the daemon opened, so a test can ask the simulator for a reply (``response.create``, as a
client may) without any speech at the microphone: every reply is then a chance for the assistant to hear
itself, and nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from kioskd.daemon import Daemon, RealtimeLink, Speaker
from kioskd.realtime import events as ev
from tests.e2e.harness import DaemonUnderTest

TAIL_BLOCKS = 20
"""After a reply, 400 ms more of microphone audio (the echo's tail) reach the server."""


class EchoDaemon(DaemonUnderTest):
    """A :class:`DaemonUnderTest` that remembers its realtime links."""

    links: list[RealtimeLink]

    def _attach(self, daemon: Daemon) -> None:
        super()._attach(daemon)
        self.links = []
        opener: Callable[[Speaker], Awaitable[RealtimeLink]] = daemon._open_session

        async def open_and_keep(speaker: Speaker) -> RealtimeLink:
            link = await opener(speaker)
            self.links.append(link)
            return link

        daemon._open_session = open_and_keep

    async def ask_for_reply(self) -> None:
        """Make the simulator answer now, as if the visitor had asked (nothing is said at the microphone)."""
        link: Any = self.links[-1]
        assert await link.send(ev.response_create()), "the realtime link is closed"

    async def reply_in_silence(self, tail_blocks: int = TAIL_BLOCKS) -> None:
        """One full reply with nobody speaking, then ``tail_blocks`` more microphone blocks (the echo's tail)."""
        daemon = self.daemon
        assert daemon is not None, "start the daemon first"
        before = len(self.events)
        await self.ask_for_reply()
        await self.wait_event("response_done", after=before)
        await self.wait_for(lambda: not self.playing(), "the reply to finish playing")
        since = daemon.counters.capture_blocks
        await self.wait_for(lambda: daemon.counters.capture_blocks >= since + tail_blocks, "the echo's tail")

    def playing(self) -> bool:
        buffer = self.parts.buffer
        return buffer.current_item() is not None or buffer.queued_ms > 0
