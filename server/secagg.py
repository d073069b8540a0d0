"""SecAgg+ rounds (`secure-aggregation = secagg+`): Flower's protocol, medfed's files.

`SecAggPlusStrategy` is `MedfedStrategy` with another training step, on
Flower's own round loop (`Strategy.start`): its `configure_train` samples
the sites and sends nothing, and its `aggregate_train` runs the round's
training through Flower's `SecAggPlusWorkflow` (flwr 1.42 has SecAgg+ only
in its workflow API), so the server receives masked vectors and learns only
their example-weighted sum. Everything around the training is the plain
path's: the rejoin wait and enrolment, the round's ledger, the study's own
strategy (sampling, server optimiser, DP noise and their checkpointed
state), medfed's federated evaluation, and `end_round` (held-out metrics,
the rounds.jsonl line, the checkpoint, the progress event), so a SecAgg+
study writes the same files in the same schema.

One round:
1. The study's strategy (`inner`, Message API) samples the sites as in a
   plain round; its train messages are not sent, only their config.
2. Once per session each site is asked its number of training images
   (`query.examples`): Flower weights a site by num_examples / max_weight and
   clips weighted values to +-`secagg-clipping-range` before quantising, so
   max_weight is the largest site's count (no weight above 1, the finest
   quantisation that never clips a model within the range). The counts are
   no secret under SecAgg+: Flower's FitRes carries num_examples in the clear.
   Under a central `dp` mode every site weighs 1 instead (client.secagg sends
   a FitRes num_examples of 1, max_weight is 1): the DP noise is calibrated
   for the unweighted mean (study.privacy).
3. `SecAggPlusWorkflow` runs unchanged with a `LegacyContext` whose legacy
   strategy, `_LegacyBridge`, returns the sampled sites with a FitIns of the
   global model and that config, and receives the unmasked weighted mean.
   Stages: setup (public keys), share_keys (encrypted Shamir shares, relayed),
   collect_masked_vectors (the global model down, the masked vector up: each
   site trains here), unmask (shares of the mask seeds). Every sampled site
   is every other's neighbour (num_shares = 1.0: plain SecAgg's complete
   graph; SecAgg+'s sparse neighbourhoods pay off at thousands of clients, a
   study has tens of hospitals); the reconstruction threshold is
   study.secure_aggregation.reconstruction_threshold.
4. The bridge gives the mean to the study's strategy as one reply per summed
   site, each carrying the mean and that site's own metrics (Flower's legacy
   path does the same: every FitRes gets the aggregate), so FedAvg returns
   the mean, FedAdam/FedYogi/FedAdagrad/FedAvgM take their server step on it,
   the DP wrappers add their noise (and adaptive clipping counts each site's
   clipped bit), and train metrics aggregate as in a plain round.
5. medfed's evaluation, not Flower's legacy evaluate workflow: evaluation is
   not what SecAgg+ protects (the legacy workflow also sends each site's
   metrics in the clear), and the same messages keep the fed_* metrics of a
   SecAgg+ study comparable to a plain one.

Accounting: the workflow sends through the study's ReportingGrid, whose
exchange accounts and checks every message as it does a plain round's
(server.grid; this class names each stage and takes a checked reply's
content): every stage message is counted per site (message_down /
message_up, the same serialized content size as the plain path), the global
model in the collect stage as model_down and the masked vector a site
returns as model_up (int64 values after masking, so twice a float32 model).
A reply that claims another site, reports an error, or whose metrics fail
the plain path's check is its site's failure, and reaches the protocol as
an error reply: a dropout, whose masks the protocol removes. rounds.jsonl gets,
beside the usual fields, `secure_aggregation`: the protocol settings, which
sites' vectors are in the sum, and per stage its seconds and each site's
bytes up and down. What the server still sees per site: the size of each
message, num-examples, training loss and timings (Flower's FitRes metrics
travel in the clear), never a model. A site whose training fails, or whose
model is not finite, drops out of the round (the protocol removes its
masks); a site whose weighted model would be clipped stops the study with
the key to raise. Per-site reconstruction and ciphertext accounting do not
exist here: SecAgg+ runs only with exchange = none.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Stage
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.server_config import ServerConfig
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from server.ledger import StudyStopped
from server.strategy import MedfedStrategy, dp_aggregation, uniform_weights
from study import protocol
from study.config import Study
from study.privacy import CENTRAL_MODES
from study.protocol import Examples, reply_metrics
from study.secure_aggregation import (
    MIN_SITES,
    MODULUS_RANGE,
    check_secure_aggregation,
    reconstruction_threshold,
)
from study.sites import SiteId

EXAMPLES = protocol.EXAMPLES  # a site's number of training images (client.secagg)
STAGES = (protocol.EXAMPLES_ACTION, *Stage.all())
CLIPPED_METRIC = protocol.CLIPPED_METRIC  # weighted model values beyond the clipping range
FITRES_METRICS = "fitres.metrics"  # Flower's legacy FitRes record of a site's metrics


def strategy_class(study: Study) -> type[MedfedStrategy]:
    """The strategy class run_study builds: SecAgg+'s training step or the plain one."""
    return SecAggPlusStrategy if study.secure_aggregation == "secagg+" else MedfedStrategy


class SecAggPlusStrategy(MedfedStrategy):
    """MedfedStrategy whose training rounds run Flower's SecAgg+ protocol."""

    def __init__(self, inner, study: Study, **kwargs) -> None:
        check_secure_aggregation(study)
        super().__init__(inner, study, **kwargs)
        self.examples: dict[SiteId, int] = {}  # site -> training images (asked once per session)
        self.stages: dict[str, dict] = {}  # this round's stages: {"seconds", "sites"}
        self.contributed: set[SiteId] = set()  # this round's sites whose masked vector arrived
        self._round: tuple[Grid, list[int], ArrayRecord, dict] | None = None

    # -- training: sample in configure_train, run SecAgg+ in aggregate_train ----------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Begin the round and sample its sites as a plain round does; nothing is sent
        here (the protocol's stages are, in aggregate_train)."""
        rnd = server_round + self.offset
        ledger = self._begin_round(rnd, grid)
        self.stages, self.contributed = {}, set()
        sampled = list(self.inner.configure_train(rnd, arrays, config, grid))
        nodes = [m.metadata.dst_node_id for m in sampled]
        ledger.sent_train = set(nodes)
        fit_config = dict(sampled[0].content[protocol.CONFIG]) if sampled else {}
        self._round = (grid, nodes, arrays, fit_config)
        return []

    def aggregate_train(
        self, server_round: int, replies
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """One training round through SecAggPlusWorkflow; the new global arrays."""
        grid, nodes, arrays, fit_config = self._round
        ledger, study = self.ledger, self.study
        rnd = ledger.round
        nodes = self._ask_examples(grid, nodes)
        sites = len(nodes)
        threshold = reconstruction_threshold(study, sites)
        max_weight = max((self.examples[self.site_of(n)] for n in nodes), default=1)
        if study.dp in CENTRAL_MODES:  # every site weighs 1 (client.secagg): a plain sum
            max_weight = 1
        ledger.extra["secure_aggregation"] = {
            "protocol": "secagg+",
            "sites_sampled": sites,
            "neighbours": sites,
            "threshold": threshold,
            "max_weight": max_weight,
            "clipping_range": study.secagg_clipping_range,
            "quantization_range": study.secagg_quantization_range,
            "modulus_range": MODULUS_RANGE,
            "summed": [],
            "stages": self.stages,
        }
        bridge = _LegacyBridge(self, nodes, grid, arrays, fit_config)
        if sites >= max(threshold, MIN_SITES):
            workflow = SecAggPlusWorkflow(
                num_shares=1.0,
                reconstruction_threshold=threshold,
                max_weight=float(max_weight),
                clipping_range=study.secagg_clipping_range,
                quantization_range=study.secagg_quantization_range,
                modulus_range=MODULUS_RANGE,
                timeout=study.round_timeout,
            )
            workflow(grid, bridge.context(rnd, arrays))
        if bridge.result is None:
            failed = ledger.failures()
            halted = next(reversed(self.stages), "before its first stage")
            reason = (
                f"SecAgg+ halted in round {rnd} ({halted}): {len(self.contributed)} of "
                f"{sites} sampled sites sent their masked model, unmasking needs {threshold} "
                f"(secagg-threshold = {study.secagg_threshold:g} of the sites, at least 3)"
            )
            detail = "; ".join(f"{f['site']}: {f['error']}" for f in failed if f["error"])
            raise StudyStopped(
                reason + (f". Failures: {detail}" if detail else ""),
                round=rnd,
                reason=reason,
                failed=failed,
            )
        return bridge.result, None

    def _ask_examples(self, grid: Grid, nodes: list[int]) -> list[int]:
        """Sites' training-set sizes, asked once per session; a site that cannot
        say takes no part in this round (its weight could exceed max_weight)."""
        unknown = [n for n in nodes if self.site_of(n) not in self.examples]
        if unknown:
            messages = [
                Message(
                    RecordDict({protocol.CONFIG: ConfigRecord({})}),
                    dst_node_id=n,
                    message_type=EXAMPLES,
                )
                for n in unknown
            ]
            grid.send_and_receive(messages, timeout=self.study.round_timeout)  # accept() keeps
        return [n for n in nodes if self.site_of(n) in self.examples]

    def secure_mean(self, summed: list[tuple[SiteId, object]], template: dict) -> ArrayRecord:
        """The protocol's result: `summed` is (site, FitRes) of each site whose masked
        vector is in the sum, each FitRes's parameters set to the unmasked mean by
        Flower. The study's strategy aggregates one copy of the mean per site, with
        that site's own metrics (Flower's legacy path does the same)."""
        ledger, study = self.ledger, self.study
        summed = sorted(summed, key=lambda item: item[0])
        ledger.extra["secure_aggregation"]["summed"] = [str(s) for s, _ in summed]
        clipped = {str(s): int(f.metrics.get(CLIPPED_METRIC, 0)) for s, f in summed}
        if any(clipped.values()):
            reason = (
                f"round {ledger.round}: weighted model values beyond secagg-clipping-range = "
                f"{study.secagg_clipping_range:g} at "
                + ", ".join(f"{k} ({v})" for k, v in clipped.items() if v)
                + "; SecAgg+ clipped them, so the sum is wrong: raise secagg-clipping-range"
            )
            raise StudyStopped(reason, round=ledger.round, reason=reason, failed=[])
        ledger.require_sites(len(summed), study.min_sites, sampled=len(ledger.sent_train))
        mean = _as_model(parameters_to_ndarrays(summed[0][1].parameters), template)
        replies = [
            Message(
                RecordDict(
                    {
                        protocol.ARRAYS: mean,
                        protocol.METRICS: MetricRecord(dict(fitres.metrics)),
                    }
                ),
                dst_node_id=0,
                message_type=protocol.TRAIN,
            )
            for _, fitres in summed
        ]
        if study.dp in CENTRAL_MODES:
            # the protocol weighted each site by its FitRes num_examples (1 under
            # these modes, client.secagg); the copies of the mean weigh 1 each
            replies = uniform_weights(replies)
            weights = [float(fitres.num_examples) for _, fitres in summed]
            ledger.privacy = dp_aggregation(study, self.inner, weights)
        t0 = time.perf_counter()
        result, _ = self.inner.aggregate_train(ledger.round, replies)
        ledger.aggregate_s = time.perf_counter() - t0
        return result

    # -- the stages' messages, as server.grid exchanges them (RoundAccount) ------------------
    def kind(self, msg: Message) -> str | None:
        stage = _stage_of(msg)
        return stage if stage in STAGES else super().kind(msg)

    def label(self, kind: str) -> str | None:
        return f"SecAgg+ stage {kind}" if kind in STAGES else super().label(kind)

    def accept(self, site: SiteId, kind: str, reply: Message) -> str | None:
        if kind == protocol.EXAMPLES_ACTION:
            self.examples[site] = Examples.from_record(reply.content).num_examples
            return None
        if kind == Stage.COLLECT_MASKED_VECTORS:
            return self._collected(site, reply)
        return None if kind in STAGES else super().accept(site, kind, reply)

    def exchanged(self, kind: str, messages: list[Message], seconds: float) -> None:
        if kind not in STAGES:
            return super().exchanged(kind, messages, seconds)
        record = self.stages.setdefault(kind, {"seconds": 0.0, "sites": {}})
        record["seconds"] += seconds
        record["sites"] = self.ledger.by_kind.get(kind, {})
        return None

    def _collected(self, site: SiteId, reply: Message) -> str | None:
        """A site's masked vector arrived: its metrics checked as a plain train reply's
        (the plain path's reply_metrics), then its model bytes, examples, seconds, loss."""
        content = reply.content
        masked = content.config_records[RECORD_KEY_CONFIGS][SecAggKey.MASKED_PARAMETERS]
        # under a central dp mode the protocol's weight is 1, the count is in the metrics
        values = reply_metrics(_fit_metrics(content.get(FITRES_METRICS)), shared=False)
        self.ledger.site(site).bytes["model_up"] += sum(len(b) for b in masked)
        entry = self.ledger.trained(site, values)
        self.contributed.add(site)
        if site.is_site:  # the next round's max_weight uses the count it trained on
            self.examples[site] = entry.examples
        return None


class _LegacyBridge(LegacyStrategy):
    """The legacy strategy SecAggPlusWorkflow drives: it returns this round's
    sampled sites and hands the unmasked mean to the study's strategy
    (`SecAggPlusStrategy.secure_mean`)."""

    def __init__(
        self,
        owner: SecAggPlusStrategy,
        nodes: list[int],
        grid: Grid,
        arrays: ArrayRecord,
        fit_config: dict,
    ) -> None:
        self.owner, self.nodes, self.grid = owner, nodes, grid
        self.template = {k: a.numpy() for k, a in arrays.items()}  # names, shapes, dtypes
        self.fit_config = fit_config
        self.result: ArrayRecord | None = None

    def context(self, rnd: int, arrays: ArrayRecord) -> LegacyContext:
        run_id = self.grid.run.run_id
        base = Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
        manager = SimpleClientManager()
        for node in self.nodes:
            manager.register(GridClientProxy(node_id=node, grid=self.grid, run_id=run_id))
        context = LegacyContext(
            base, config=ServerConfig(num_rounds=1), strategy=self, client_manager=manager
        )
        parameters = ndarrays_to_parameters([a.numpy() for a in arrays.values()])
        context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            parameters, keep_input=True
        )
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {WorkflowKey.CURRENT_ROUND: rnd, WorkflowKey.START_TIME: time.time()}
        )
        return context

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager):
        proxies = client_manager.all()
        return [(proxies[str(n)], FitIns(parameters, dict(self.fit_config))) for n in self.nodes]

    def aggregate_fit(self, server_round: int, results, failures):
        """`results`: (proxy, FitRes) of each site whose masked vector is in the
        sum; Flower has set every FitRes's parameters to the unmasked mean."""
        if not results:
            return None, {}
        summed = [(self.owner.site_of(proxy.node_id), fitres) for proxy, fitres in results]
        self.result = self.owner.secure_mean(summed, self.template)
        return None, {}

    # the rest of the legacy interface: evaluation is medfed's (see the module docstring)
    def initialize_parameters(self, client_manager):
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


def _as_model(ndarrays: list[np.ndarray], template: dict[str, np.ndarray]) -> ArrayRecord:
    """The unmasked mean (float64 from Flower's dequantisation) in the model's names
    and dtypes."""
    if len(ndarrays) != len(template):
        raise ValueError(f"SecAgg+ returned {len(ndarrays)} arrays for a model of {len(template)}")
    out = {}
    for (name, ref), arr in zip(template.items(), ndarrays, strict=True):
        if arr.shape != ref.shape:
            raise ValueError(f"SecAgg+ returned {name} shaped {arr.shape}, not {ref.shape}")
        out[name] = Array(np.asarray(arr, dtype=ref.dtype))
    return ArrayRecord(out)


def _fit_metrics(record) -> MetricRecord | None:
    """A FitRes's metrics (Flower keeps them in a ConfigRecord) as the MetricRecord
    reply_metrics checks: its numbers (anything else is not a metric)."""
    if not isinstance(record, ConfigRecord):
        return None
    return MetricRecord(
        {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    )


def _stage_of(msg: Message) -> str:
    if msg.metadata.message_type == EXAMPLES:
        return protocol.EXAMPLES_ACTION
    configs = msg.content.config_records
    if RECORD_KEY_CONFIGS in configs and SecAggKey.STAGE in configs[RECORD_KEY_CONFIGS]:
        return str(configs[RECORD_KEY_CONFIGS][SecAggKey.STAGE])
    return msg.metadata.message_type
