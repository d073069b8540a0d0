"""Fault injection (`fault-sites`) as a ClientApp train mod, outside the hospital's
production path.

What a fault does to a site's train message, in the round it names:
- (plain) the handler is not called: `InjectedFault` is raised, which the
  site's reply mod reports as the site's error;
- `stall`: the message waits `stall` seconds first (a slow or vanished site:
  the server's round-timeout);
- `crash`: the process dies (`os._exit(70)`: a worker killed mid-round);
- `nan`: the site trains, and its reply's model parameters are NaN.

Who may turn it on: the study's `fault-sites` is sent by the server in the run
config, and a hospital must never stall or die because a server asks. So the mod
acts only where the one running the hospital's code said so:
- `medfed run` (the simulation) and the tests build the ClientApp with the study
  in hand (`client.client_app.build_client_app(study)`): they install it;
- a deployed SuperNode runs the app built from the run config
  (`client.client_app.app`); there it acts only when the hospital's own node
  config says `allow-fault-injection=true` (e.g. `medfed deploy local`, a trial
  federation on the operator's own machine). Any other hospital ignores every
  fault setting the server sends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message

from study import protocol
from study.config import Fault, Study

ALLOW_FAULT_INJECTION = "allow-fault-injection"  # node config: the hospital's own opt-in
CRASH_EXIT_CODE = 70


class InjectedFault(RuntimeError):
    """Raised on purpose by `fault-sites` (fault-injection studies)."""


def node_allows_faults(node_config) -> bool:
    """Whether the hospital's node config opts in to fault injection (a bool; a value
    of another type is an error naming the key, not a silent no)."""
    value = node_config.get(ALLOW_FAULT_INJECTION, False)
    if not isinstance(value, bool):
        raise ValueError(
            f"node config {ALLOW_FAULT_INJECTION} = {value!r} must be true or false "
            f'(--node-config "{ALLOW_FAULT_INJECTION}=true")'
        )
    return value


def planned_fault(study: Study, site: int, server_round: int) -> Fault | None:
    """The fault `fault-sites` plans for `site` in `server_round`, if any."""
    fault = study.fault_plan.get(site)
    if fault is None or fault.round not in (None, server_round):
        return None
    return fault


def fault_mod(msg: Message, context: Context, call_next: Callable, study: Study) -> Message:
    """A train mod: apply the fault `study` plans for this node's site this round."""
    site = int(context.node_config["partition-id"])
    server_round = int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND])
    fault = planned_fault(study, site, server_round)
    if fault is None:
        return call_next(msg, context)
    if fault.kind == "stall":
        time.sleep(fault.stall_s)  # a slow or vanished site: the server's round-timeout
        return call_next(msg, context)
    if fault.kind == "crash":
        os._exit(CRASH_EXIT_CODE)  # a worker killed mid-round (Ray restarts it for the next)
    if fault.kind == "nan":
        reply = call_next(msg, context)
        if protocol.ARRAYS in reply.content:
            reply.content[protocol.ARRAYS] = _nan_parameters(reply.content[protocol.ARRAYS], study)
        return reply
    raise InjectedFault(
        f"site {site}: injected fault in round {server_round} (fault-sites = {study.fault_sites!r})"
    )


def _nan_parameters(arrays: ArrayRecord, study: Study) -> ArrayRecord:
    """The model with every trainable parameter NaN (buffers, e.g. BatchNorm's running
    statistics, as trained)."""
    from study.task import build_model

    parameters = {name for name, _ in build_model(study.modality).named_parameters()}
    out = ArrayRecord()
    for name, array in arrays.items():
        if name in parameters:
            out[name] = Array(np.full_like(array.numpy(), np.nan))
        else:
            out[name] = array
    return out
