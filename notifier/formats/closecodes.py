"""Every way the server ends a WebSocket connection, in one table (mirrored in docs/protocol.md).

Codes 4000-4499 tell a client it may reconnect (with backoff, and with a fresh token where the reason says so);
codes 4500-4999 are terminal: reconnecting with the same input fails again.
"""

from __future__ import annotations

from dataclasses import dataclass

# A normal close: the client said goodbye, and its session ends with it.
GOODBYE_CODE = 1000


@dataclass(frozen=True)
class CloseReason:
    code: int
    reason: str

    @property
    def reconnect(self) -> bool:
        """Whether a client may reconnect after this close (maybe after fetching a new token). A frame too big
        or not UTF-8 is the client's own doing: it would send it again, so 1009 and 1007 are terminal like the
        4500 range."""
        return self.code < 4500 and self.code not in (GOODBYE_CODE, 1007, 1009)


# Standard codes.
SHUTDOWN = CloseReason(1012, "server restarting")
TRY_AGAIN_LATER = CloseReason(1013, "broker unavailable")
MESSAGE_TOO_BIG = CloseReason(1009, "frame too big")
INVALID_UTF8 = CloseReason(1007, "frame not utf-8")

# Reconnect range.
AUTH_TIMEOUT = CloseReason(4000, "auth timeout")
TOKEN_EXPIRED = CloseReason(4001, "token expired")
SLOW_CLIENT = CloseReason(4002, "slow client")
SERVER_FULL = CloseReason(4003, "too many connections")
RATE_LIMITED = CloseReason(4004, "too many frames")
APPLICATION_UNAVAILABLE = CloseReason(4005, "application unavailable")

# Terminal range.
INVALID_TOKEN = CloseReason(4500, "invalid token")
PROTOCOL_VIOLATION = CloseReason(4501, "protocol violation")
USER_CONNECTION_LIMIT = CloseReason(4502, "too many connections for this user")
DISCONNECTED = CloseReason(4503, "disconnected by the server")
REFUSED_BY_APPLICATION = CloseReason(4504, "refused by the application")

ALL = (
    SHUTDOWN,
    TRY_AGAIN_LATER,
    MESSAGE_TOO_BIG,
    INVALID_UTF8,
    AUTH_TIMEOUT,
    TOKEN_EXPIRED,
    SLOW_CLIENT,
    SERVER_FULL,
    RATE_LIMITED,
    APPLICATION_UNAVAILABLE,
    INVALID_TOKEN,
    PROTOCOL_VIOLATION,
    USER_CONNECTION_LIMIT,
    DISCONNECTED,
    REFUSED_BY_APPLICATION,
)

# The close of a session whose client said goodbye outside its connection (the HTTP stream's DELETE): not a close
# of the server's choosing, so it is neither in ALL nor counted.
GOODBYE = CloseReason(GOODBYE_CODE, "closed by the client")

# The closes the WebSocket layer decides (a frame too big, or not UTF-8), sent with our reason and counted as ours.
FRAME_FAULTS = {MESSAGE_TOO_BIG.code: MESSAGE_TOO_BIG, INVALID_UTF8.code: INVALID_UTF8}
# The key of a `websocket.disconnect` message that marks a close the server sent (not one the client sent).
SERVER_CLOSE_KEY = "notifier.server_close"
