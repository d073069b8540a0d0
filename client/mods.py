"""The hospital's ClientApp mods: what every message passes through around the handlers.

- `site_reply_mod` (every message): a handler's exception becomes the site's
  error status (which site, what failed, where) instead of a crashed app, so
  the server can report which site failed and why; every train reply names
  its site;
- `transport_mod` (every message): unpacks a packed message (study.transport:
  the model as one Array on the wire) and packs its reply;
- `dp_clipping_mod` (train): the Flower clipping mod that the study's dp mode
  names in study.dp's registry (client-side DP).
SecAgg+ (client/secagg.py) and fault injection (client/faults.py) are train
mods of their own.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

from flwr.app import Context, Message, RecordDict

from client import audit
from study import protocol, transport
from study.config import Study
from study.dp import dp_mode
from study.protocol import Status


def site_reply_mod(msg: Message, context: Context, call_next: Callable) -> Message:
    """A Flower mod: a handler's exception becomes an error status (which
    site, what failed, where) instead of a crashed app, and every train reply
    names its site."""
    site = int(context.node_config["partition-id"])
    try:
        with audit.site_scope(f"site-{site}"):
            reply = call_next(msg, context)
    except Exception as exc:  # noqa: BLE001 - reported per site in rounds.jsonl
        status = Status(site, error=describe(exc)).to_record()
        return Message(content=RecordDict({protocol.STATUS: status}), reply_to=msg)
    kind = msg.metadata.message_type.split(".")[0]
    if kind == protocol.TRAIN and protocol.STATUS not in reply.content:
        reply.content[protocol.STATUS] = Status(site).to_record()
    return reply


def transport_mod(msg: Message, context: Context, call_next: Callable) -> Message:
    """A Flower mod: a message the server packed (study.transport: one Array per
    ArrayRecord on the wire) is unpacked before any other mod or handler sees it,
    and the reply is packed the same way; a plain message gets a plain reply."""
    packed = msg.has_content() and transport.is_packed(msg.content)
    if packed:
        msg.content = transport.unpack(msg.content)
    reply = call_next(msg, context)
    if packed and reply.has_content():
        reply.content = transport.pack(reply.content)
    return reply


def dp_clipping_mod(msg: Message, context: Context, call_next: Callable, study: Study) -> Message:
    """Flower's client-side clipping mod of the study's dp mode (study.dp's registry
    names it: client-fixed and client-adaptive have one).

    Flower's mods expect a message of one ArrayRecord and one ConfigRecord;
    a medfed train message may also carry peers' ciphertext and key grants.
    The mod sees the model and its config, the handler the whole message."""
    mod = dp_mode(study.dp).client_mod_function()
    if mod is None:
        return call_next(msg, context)
    model_and_config = (protocol.ARRAYS, protocol.CONFIG)
    extra = {k: msg.content[k] for k in list(msg.content.keys()) if k not in model_and_config}
    for key in extra:
        del msg.content[key]

    def restore_then_next(message: Message, ctx: Context) -> Message:
        for key, value in extra.items():
            message.content[key] = value
        return call_next(message, ctx)

    return mod(msg, context, restore_then_next)


def describe(exc: Exception) -> str:
    """An exception in one line: its type, its message and where it was raised."""
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    loc = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {exc}{loc}"
