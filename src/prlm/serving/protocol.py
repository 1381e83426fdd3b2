"""What `prlm serve` listens with: uvicorn's h11 protocol with a deadline on the request head.

uvicorn times out idle keep-alive connections and this server's `BodyLimit` times out slow bodies, but
nothing bounds the time a client takes to send its request line and headers: one header byte every few
seconds held a connection open indefinitely (slowloris). Here every connection must deliver a complete
request head within `header_timeout_s` of opening, or of its previous answer, else it is closed.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


def header_timeout_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """An H11Protocol class (for uvicorn's `http=`) that enforces `header_timeout_s`."""

    class HeaderTimeoutH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_head_timer()

        def on_response_complete(self) -> None:
            self._arm_head_timer()  # the next request's head is due now (before super() parses a pipelined one)
            super().on_response_complete()

        def handle_events(self) -> None:
            super().handle_events()
            if self._in_request():  # a complete head arrived: the body has its own deadline (BodyLimit)
                self._cancel_head_timer()

        def connection_lost(self, exc) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self._in_request() and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11Protocol
