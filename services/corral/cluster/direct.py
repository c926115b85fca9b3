"""Direct streaming: what routers, nginx and workers tell each other so that an inference answer
goes from the worker to nginx without passing through the router.

With nginx in front (``corral-direct.conf``), a router that is told so (``DIRECT_HEADER``)
places the request and takes its slot as usual, then answers nginx with ``X-Accel-Redirect``
to nginx's named location ``DIRECT_LOCATION``, the worker's address and the headers the worker
needs. nginx sends the client's request there and streams the answer itself. The request carries
a lease (``LEASE_HEADER``: the router's inbox and the request's id); the worker reports the
request's start and end to that inbox (a Redis list), and the router gives the slot back at the
end, as it does after relaying.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

DIRECT_LOCATION = "@corral_worker"
# nginx -> router: nginx can stream from workers (its value is ignored: the location is fixed).
DIRECT_HEADER = "x-corral-direct"
# router -> nginx -> worker: where the worker reports (see Lease).
LEASE_HEADER = "x-corral-lease"
# router -> nginx: the worker's host:port.
WORKER_HEADER = "x-corral-worker"
# nginx -> router, when the worker could not be reached or answered 502/503/504: the lease it
# had, so that the router tries another worker (and the slot is given back).
RETRY_HEADER = "x-corral-retry"
# Reports live this long unread (a router that died before reading its inbox).
INBOX_TTL_S = 3600
STARTED = "s"
ENDED = "e"

_INBOX = re.compile(r"corral:inbox:[0-9a-f]{32}")
_ID = re.compile(r"[0-9a-f]{1,32}")
_STATUS = re.compile(r"0|[1-5][0-9][0-9]")
_MS = re.compile(r"-1|[0-9]{1,9}")
_WORKER_ID = re.compile(r"[A-Za-z0-9._:-]{1,200}")  # as CORRAL_WORKER_ID


def deliver(pipe: Any, inbox: str, line: str) -> None:
    """Queue one report into a router's inbox on a Redis pipeline (kept ``INBOX_TTL_S`` unread)."""
    pipe.rpush(inbox, line)
    pipe.expire(inbox, INBOX_TTL_S)


def inbox_key(router: str) -> str:
    """One router process's inbox (``router``: 32 hex digits)."""
    return f"corral:inbox:{router}"


@dataclass(frozen=True)
class Lease:
    """``LEASE_HEADER``'s value: ``<inbox> <request id> <worker id>``."""

    inbox: str
    id: str
    worker: str

    def header(self) -> str:
        return f"{self.inbox} {self.id} {self.worker}"

    @classmethod
    def parse(cls, value: str) -> Lease | None:
        """None for anything a router did not write (bounded: this comes over the network)."""
        parts = value.split(" ") if len(value) <= 300 else []
        if len(parts) != 3 or not _INBOX.fullmatch(parts[0]) or not _ID.fullmatch(parts[1]):
            return None
        if not _WORKER_ID.fullmatch(parts[2]):
            return None
        return cls(*parts)


@dataclass(frozen=True)
class Report:
    """A worker's report on a request: ``s <id>`` when it starts; ``e <id> <status> <ms>`` at the
    end, with the answer's status (0: none began) and the milliseconds from the start to its
    first byte (-1: none came)."""

    kind: str
    id: str
    status: int = 0
    first_byte_ms: int = -1

    def line(self) -> str:
        return (
            f"{self.kind} {self.id}"
            if self.kind == STARTED
            else f"{self.kind} {self.id} {self.status} {self.first_byte_ms}"
        )

    @classmethod
    def parse(cls, raw: bytes | str) -> Report | None:
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        parts = text.split(" ") if len(text) <= 100 else []
        if len(parts) == 2 and parts[0] == STARTED and _ID.fullmatch(parts[1]):
            return cls(STARTED, parts[1])
        ended = len(parts) == 4 and parts[0] == ENDED and _ID.fullmatch(parts[1])
        if ended and _STATUS.fullmatch(parts[2]) and _MS.fullmatch(parts[3]):
            return cls(ENDED, parts[1], int(parts[2]), int(parts[3]))
        return None
