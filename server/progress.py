"""Progress of a running study: one protocol for simulation and deployment.

The ServerApp emits events; each is appended as one strict JSON line to
`<out-dir>/events.jsonl` and handed to an in-process listener when there is
one. A simulated study's driver runs the ServerApp in its own process and
listens directly; a deployed study's ServerApp runs inside the SuperLink, so
`medfed deploy` follows events.jsonl (`EventFollower`) and feeds the very same
listener. Events, by `event`:

    start   {"rounds", "sites", "from_round"}
    waiting {"round", "sites": names of study sites not connected, "seconds": the most
             the round waits for them (rejoin-wait) before it begins without them}
    refused {"node", "site" (the site it claimed, or null), "reason"}: a node that joined
             was not enrolled (a malformed hello, or a site whose node is still connected)
    reply   {"round", "phase" (train | evaluate), "done", "of"}
    round   {"line": a rounds.jsonl line}
    done    {"summary": summary.json}
    stopped {"round", "reason"}
    warning {"message"}: something the operator chose to accept (a checkpoint taken
             on --trust-checkpoint), said once
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from study.schema import SchemaError, append_jsonl, dumps, loads

EVENT_KINDS = ("start", "waiting", "refused", "reply", "round", "done", "stopped", "warning")
Listener = Callable[[dict[str, Any]], None]


class Events:
    """Where a study's progress goes: events.jsonl and an optional listener."""

    def __init__(self, path: str | os.PathLike | None, listener: Listener | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.listener = listener

    def emit(self, kind: str, **fields: Any) -> None:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown progress event {kind!r}; known: {', '.join(EVENT_KINDS)}")
        event = {"event": kind, **fields}
        if self.path is not None:
            append_jsonl(self.path, event)
        if self.listener is not None:
            self.listener(loads(dumps(event)))  # the listener sees what the file holds


class EventFollower:
    """Reads the events appended to an events.jsonl since the last `poll`.

    Starts at the file's current end (an earlier run's events are not
    replayed); a file that was replaced (a fresh run sets the old one aside)
    is read from its start. Only whole lines are returned.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.inode, self.offset = self._stat()
        self.pending = b""

    def _stat(self) -> tuple[int | None, int]:
        try:
            st = self.path.stat()
        except OSError:
            return None, 0
        return st.st_ino, st.st_size

    def poll(self) -> list[dict[str, Any]]:
        inode, size = self._stat()
        if inode is None:
            return []
        if inode != self.inode or size < self.offset:
            self.inode, self.offset, self.pending = inode, 0, b""
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        self.offset += len(chunk)
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        events = []
        for line in lines:
            if line.strip():
                try:
                    events.append(loads(line.decode(), source=str(self.path)))
                except (SchemaError, UnicodeDecodeError):
                    continue  # a damaged line never stops the display
        return events
