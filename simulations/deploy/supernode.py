"""Flower's `flower-supernode`, with its idle wait between pulls shortened.

    python -m simulations.deploy.supernode [flower-supernode's arguments]

Why: flwr 1.42's SuperNode loop (`flwr/supernode/start_client_internal.py`)
sleeps a hard-coded 3 s whenever a pull from the SuperLink finds no message,
and there is no flag for it. A site's message of a round therefore waits up
to 3 s in the SuperLink before its SuperNode fetches it, twice a round
(train, then evaluate), and `medfed bench deploy-round` measured those
waits as most of a deployed round's time outside medfed's processes. This
launcher runs the unchanged `flower-supernode` command with that one wait
set to `MEDFED_SUPERNODE_IDLE_S` seconds (default 0.25): each idle pull is
one small request to the SuperLink, so 3 s -> 0.25 s costs a SuperLink 12x
the idle requests per hospital, 4 a second. The same loop fetches a
message's objects with `pull_objects`, whose retry backoff starts at 1 s and
doubles (flwr's defaults): when a message is announced before the ServerApp
has pushed all its objects, the SuperNode waits 1 s, then 2 s more. Here
the backoff starts at `OBJECT_BACKOFF_S` and is capped at ten times that,
as medfed's executor polls the SuperNode. Every other wait of Flower's is
left as it is. `medfed deploy local` and `medfed deploy executor --
flower-supernode ...` (the compose hospitals) start SuperNodes through it.
"""

from __future__ import annotations

import functools
import os
import sys
import time

FLOWER_IDLE_WAIT_S = 3  # what flwr 1.42's SuperNode loop sleeps after an empty pull
DEFAULT_IDLE_S = 0.25
OBJECT_BACKOFF_S = 0.05  # first retry of a message object the SuperLink does not have yet


class _IdleClock:
    """The `time` module as the SuperNode loop sees it: the same, except that
    its 3 s idle sleep takes `idle_s`."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s

    def __getattr__(self, name: str):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(self.idle_s if seconds == FLOWER_IDLE_WAIT_S else seconds)


def idle_seconds() -> float:
    text = os.environ.get("MEDFED_SUPERNODE_IDLE_S", str(DEFAULT_IDLE_S))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= FLOWER_IDLE_WAIT_S:
        raise SystemExit(f"MEDFED_SUPERNODE_IDLE_S={text!r}: seconds in (0, {FLOWER_IDLE_WAIT_S}]")
    return value


def patch_idle_wait(idle_s: float) -> None:
    """Give flwr's SuperNode loop the shorter idle wait (raises if flwr changed)."""
    from flwr.supernode import start_client_internal as loop

    if not isinstance(getattr(loop, "time", None), (type(time), _IdleClock)):
        raise RuntimeError(
            "flwr.supernode.start_client_internal no longer imports `time`: this launcher "
            "was written for flwr 1.42; run flower-supernode directly"
        )
    loop.time = _IdleClock(idle_s)
    pull = getattr(loop, "pull_objects", None)
    if pull is None:
        raise RuntimeError("flwr.supernode.start_client_internal has no pull_objects (flwr 1.42)")
    if not isinstance(pull, functools.partial):
        loop.pull_objects = functools.partial(
            pull, initial_backoff=OBJECT_BACKOFF_S, backoff_cap=10 * OBJECT_BACKOFF_S
        )


def supernode_command(argv: list[str]) -> list[str]:
    """`argv` with a leading `flower-supernode` (any path) run through this launcher."""
    if argv and os.path.basename(argv[0]) == "flower-supernode":
        return [sys.executable, "-m", "simulations.deploy.supernode", *argv[1:]]
    return list(argv)


def main() -> None:
    patch_idle_wait(idle_seconds())
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
