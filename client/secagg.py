"""The hospital's side of SecAgg+ (`secure-aggregation = secagg+`).

`secure_aggregation_mod` wraps the ClientApp's train handler in Flower's
`secaggplus_mod` (flwr.client.mod) when the study asks for SecAgg+; every
other train message and study passes straight through. Flower's mod answers
the setup, share-keys and unmask stages itself; in the collect-masked-vectors
stage it calls the app with a legacy fit message (`fitins.parameters`,
`fitins.config`) and expects a legacy FitRes record dict back, whose
parameters it weights, quantises and masks. `_fit_through_train_handler`
turns that fit message into the train message medfed's handler (and the DP
clipping mod before it) understands, runs one round of `Site.train_round`
through it, and returns its model, num_examples and metrics as the FitRes.
It also refuses to put a model with NaN or infinite weights into the sum (the
server could not see it there) and counts the weighted values the protocol
will clip (`secagg-clipped`), so the server can stop with the key to raise.

The names of the records and fields are study.protocol's.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE
from flwr.compat.common import recorddict_compat as compat

from study import protocol
from study.config import Study
from study.dp import CENTRAL_MODES
from study.protocol import CLIPPED_METRIC


def secure_aggregation_mod(msg: Message, context: Context, call_next, study: Study) -> Message:
    """A train mod: Flower's secaggplus_mod around the train handler under SecAgg+."""
    if study.secure_aggregation != "secagg+":
        return call_next(msg, context)
    from flwr.client.mod import secaggplus_mod

    def fit(legacy: Message, ctx: Context) -> Message:
        return _fit_through_train_handler(legacy, ctx, call_next, study)

    return secaggplus_mod(msg, context, fit)


def _fit_through_train_handler(legacy: Message, context: Context, call_next, study: Study):
    """The collect stage's legacy fit message, answered by medfed's train handler."""
    from study.task import build_model

    fitins = compat.recorddict_to_fitins(legacy.content, keep_input=True)
    names = list(build_model(study.modality).state_dict())
    received = parameters_to_ndarrays(fitins.parameters)
    if len(received) != len(names):
        raise ValueError(
            f"SecAgg+ fit message holds {len(received)} arrays, the study's "
            f"{study.modality} model has {len(names)}"
        )
    content = RecordDict(
        {
            protocol.ARRAYS: ArrayRecord(
                {k: Array(a) for k, a in zip(names, received, strict=True)}
            ),
            protocol.CONFIG: ConfigRecord(dict(fitins.config)),
        }
    )
    reply = call_next(Message(content=content, metadata=legacy.metadata), context)
    extra = sorted(set(reply.content.keys()) - {protocol.ARRAYS, protocol.METRICS, protocol.STATUS})
    if extra:
        raise ValueError(
            f"a SecAgg+ reply carries only the model and its metrics, not {', '.join(extra)} "
            "(the study must have exchange = none)"
        )
    trained = [a.numpy() for a in reply.content[protocol.ARRAYS].values()]
    site = reply.content[protocol.STATUS][protocol.SITE]
    if not all(np.isfinite(a).all() for a in trained):
        raise ValueError(
            f"site {site}: the trained model has NaN or infinite weights; it is not put into "
            "the secure sum (lower learning-rate)"
        )
    metrics = dict(reply.content[protocol.METRICS])
    # the protocol weights a site by num_examples; under a central dp mode every
    # site weighs 1, the mean the noise is calibrated for (study.privacy)
    weight = 1 if study.dp in CENTRAL_MODES else int(metrics[protocol.NUM_EXAMPLES])
    metrics[CLIPPED_METRIC] = _clipped_values(trained, weight, context)
    fitres = FitRes(
        status=Status(code=Code.OK, message="Success"),
        parameters=ndarrays_to_parameters(trained),
        num_examples=weight,
        metrics=metrics,
    )
    out = compat.fitres_to_recorddict(fitres, keep_input=False)
    out[protocol.STATUS] = reply.content[protocol.STATUS]
    return Message(content=out, reply_to=legacy)


def _clipped_values(arrays: list[np.ndarray], examples: int, context: Context) -> int:
    """How many values secaggplus_mod will clip: it multiplies the model by the
    weight round(examples / max_weight * Q) / Q, then clips to the clipping
    range (both from the setup stage, kept in the node's state)."""
    state = context.state.config_records.get(RECORD_KEY_STATE)
    if state is None:
        return 0
    target = int(state["target_range"])
    weight = round(examples / float(state["max_weight"]) * target) / target
    limit = float(state["clipping_range"])
    return int(sum(np.count_nonzero(np.abs(a.astype(np.float64) * weight) > limit) for a in arrays))
