"""uvicorn's h11 protocol with a deadline for each request's head.

uvicorn times nothing before a request's headers are in: a client that connects and sends
nothing, or trickles its headers a byte at a time, holds a connection (and a --max-connections
slot) for as long as it likes, and its keep-alive timer is cancelled by any byte. Here the whole
head must arrive within the deadline (`serve --upload-timeout`, which also bounds the body) from
the connection's start or the previous answer; a late one is answered 408 and closed (so is a
connection still trickling the rest of a body its answer did not need, e.g. a GET's).
"""

from __future__ import annotations

import asyncio
import os

from uvicorn.protocols.http.h11_impl import H11Protocol

#: The deadline in seconds, from the environment so that `serve --workers N` processes see it.
ENV_HEAD_TIMEOUT = "BLOODMNIST_HEAD_TIMEOUT"
LATE_HEAD = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: 40\r\n\r\nthe request head did not arrive in time\n"
)


class HeadDeadlineProtocol(H11Protocol):
    """H11Protocol whose connections wait at most `ENV_HEAD_TIMEOUT` seconds for a head while
    no request is being answered (before the first, and after each answer)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if not self._waiting() and self._head_timer is not None:
            self._head_timer.cancel()  # a request is being answered; its body has its own deadline
            self._head_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may take a pipelined head already
        if self._waiting() and not self.transport.is_closing():
            self._arm()  # also while the rest of an unread body still comes in

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _waiting(self) -> bool:
        """No request is being answered: the next thing due from the client is a head."""
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        seconds = float(os.environ.get(ENV_HEAD_TIMEOUT, "30"))
        self._head_timer = self.loop.call_later(seconds, self._late)

    def _late(self) -> None:
        self._head_timer = None
        if self._waiting() and not self.transport.is_closing():
            self.transport.write(LATE_HEAD)
            self.transport.close()
