"""SecAgg+ rounds (`secure-aggregation = secagg+`): Flower's protocol, medfed's files.

`SecAggPlusStrategy` is `MedfedStrategy` with another round loop: `start`
runs each round's training through Flower's `SecAggPlusWorkflow` (flwr 1.42
has SecAgg+ only in its workflow API), so the server receives masked
vectors and learns only their example-weighted sum. Everything around the
training is the plain path's: enrolment, the study's own strategy (sampling,
server optimiser, DP noise and their checkpointed state), medfed's federated
evaluation, and `end_round` (held-out metrics, the rounds.jsonl line, the
checkpoint, the progress event), so a SecAgg+ study writes the same files in
the same schema.

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

Accounting (`StageGrid`, between the workflow and the ReportingGrid): every
stage message is counted per site (message_down / message_up, the same
serialized content size as the plain path), the global model in the collect
stage as model_down and the masked vector a site returns as model_up
(int64 values after masking, so twice a float32 model). rounds.jsonl gets,
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
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import ErrorCode
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
from flwr.serverapp.strategy import Result

from server.grid import ReportingGrid, exchange
from server.strategy import (
    MedfedStrategy,
    StudyStopped,
    array_bytes,
    dp_aggregation,
    message_bytes,
    uniform_weights,
)
from study.config import Study
from study.privacy import CENTRAL_MODES
from study.schema import RoundRecord
from study.secure_aggregation import (
    MIN_SITES,
    MODULUS_RANGE,
    check_secure_aggregation,
    reconstruction_threshold,
)

EXAMPLES = "query.examples"  # a site's number of training images (client.secagg)
STAGES = ("examples", *Stage.all())
CLIPPED_METRIC = "secagg-clipped"  # weighted model values beyond the clipping range


def strategy_class(study: Study) -> type[MedfedStrategy]:
    """The strategy class run_study builds: SecAgg+'s round loop or the plain one."""
    return SecAggPlusStrategy if study.secure_aggregation == "secagg+" else MedfedStrategy


class SecAggPlusStrategy(MedfedStrategy):
    """MedfedStrategy whose training rounds run Flower's SecAgg+ protocol."""

    def __init__(self, inner, study: Study, **kwargs) -> None:
        check_secure_aggregation(study)
        super().__init__(inner, study, **kwargs)
        self.examples: dict[int, int] = {}  # site -> training images (asked once per session)
        self.protocol: dict = {}  # this round's `secure_aggregation` entry of rounds.jsonl

    # -- Flower's round loop, with the training through SecAgg+ -----------------------------
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Strategy.start's loop (train, federated evaluation, evaluate_fn) with
        each round's training run by `secure_train`."""
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result = Result()
        if evaluate_fn:
            evaluate_fn(0, initial_arrays)
        arrays = initial_arrays
        for current in range(1, num_rounds + 1):
            arrays = result.arrays = self.secure_train(current, arrays, train_config, grid, timeout)
            replies = grid.send_and_receive(
                self.configure_evaluate(current, arrays, evaluate_config, grid), timeout=timeout
            )
            metrics = self.aggregate_evaluate(current, replies)
            if metrics is not None:
                result.evaluate_metrics_clientapp[current] = metrics
            if evaluate_fn:
                evaluate_fn(current, arrays)
        return result

    def secure_train(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
        timeout: float,
    ) -> ArrayRecord:
        """One training round through SecAggPlusWorkflow; the new global arrays."""
        rnd = server_round + self.offset
        state = self._begin_round(rnd, grid)
        stages = StageGrid(grid, self)
        sampled = list(self.inner.configure_train(rnd, arrays, config, grid))
        nodes = [m.metadata.dst_node_id for m in sampled]
        state.sent_train = set(nodes)
        fit_config = dict(sampled[0].content["config"]) if sampled else {}
        nodes = self._ask_examples(stages, nodes, timeout)
        sites = len(nodes)
        threshold = reconstruction_threshold(self.study, sites)
        max_weight = max((self.examples[self.directory.site_of(n)] for n in nodes), default=1)
        if self.study.dp in CENTRAL_MODES:  # every site weighs 1 (client.secagg): a plain sum
            max_weight = 1
        self.protocol = {
            "protocol": "secagg+",
            "sites_sampled": sites,
            "neighbours": sites,
            "threshold": threshold,
            "max_weight": max_weight,
            "clipping_range": self.study.secagg_clipping_range,
            "quantization_range": self.study.secagg_quantization_range,
            "modulus_range": MODULUS_RANGE,
            "summed": [],
            "stages": stages.stages,
        }
        bridge = _LegacyBridge(self, nodes, stages, arrays, fit_config)
        if sites >= max(threshold, MIN_SITES):
            workflow = SecAggPlusWorkflow(
                num_shares=1.0,
                reconstruction_threshold=threshold,
                max_weight=float(max_weight),
                clipping_range=self.study.secagg_clipping_range,
                quantization_range=self.study.secagg_quantization_range,
                modulus_range=MODULUS_RANGE,
                timeout=timeout,
            )
            workflow(stages, bridge.context(rnd, arrays))
        if isinstance(grid, ReportingGrid):  # end_round reads the train phase's time here
            grid.phase_seconds[(rnd, "train")] = sum(s["seconds"] for s in stages.stages.values())
        if bridge.result is None:
            failed = [s.to_json() for s in state.sites.values() if not s.ok]
            halted = next(reversed(stages.stages), "before its first stage")
            reason = (
                f"SecAgg+ halted in round {rnd} ({halted}): {len(stages.contributed)} of "
                f"{sites} sampled sites sent their masked model, unmasking needs {threshold} "
                f"(secagg-threshold = {self.study.secagg_threshold:g} of the sites, at least 3)"
            )
            detail = "; ".join(f"{f['site']}: {f['error']}" for f in failed if f["error"])
            raise StudyStopped(
                reason + (f". Failures: {detail}" if detail else ""),
                round=rnd,
                reason=reason,
                failed=failed,
            )
        return bridge.result

    def _ask_examples(self, stages: StageGrid, nodes: list[int], timeout: float) -> list[int]:
        """Sites' training-set sizes, asked once per session; a site that cannot
        say takes no part in this round (its weight could exceed max_weight)."""
        unknown = [n for n in nodes if self.directory.site_of(n) not in self.examples]
        if unknown:
            messages = [
                Message(
                    RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=EXAMPLES
                )
                for n in unknown
            ]
            for reply in stages.send_and_receive(messages, timeout=timeout):
                if not reply.has_error():
                    site = self.directory.site_of(reply.metadata.src_node_id)
                    self.examples[site] = int(reply.content["examples"]["num-examples"])
        return [n for n in nodes if self.directory.site_of(n) in self.examples]

    # -- the round's record ---------------------------------------------------------------
    def round_record(self, global_metrics: dict) -> RoundRecord:
        record = super().round_record(global_metrics)
        record.extra["secure_aggregation"] = self.protocol
        return record


class _LegacyBridge(LegacyStrategy):
    """The legacy strategy SecAggPlusWorkflow drives: it returns this round's
    sampled sites and hands the unmasked mean to the study's own strategy."""

    def __init__(
        self,
        owner: SecAggPlusStrategy,
        nodes: list[int],
        grid: StageGrid,
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
        owner, state = self.owner, self.owner.state
        if not results:
            return None, {}
        summed = sorted(
            ((owner.directory.site_of(proxy.node_id), fitres) for proxy, fitres in results),
            key=lambda item: (0, item[0], "") if isinstance(item[0], int) else (1, 0, item[0]),
        )
        owner.protocol["summed"] = [state.site(s).site for s, _ in summed]
        clipped = {state.site(s).site: int(f.metrics.get(CLIPPED_METRIC, 0)) for s, f in summed}
        if any(clipped.values()):
            reason = (
                f"round {state.round}: weighted model values beyond secagg-clipping-range = "
                f"{owner.study.secagg_clipping_range:g} at "
                + ", ".join(f"{k} ({v})" for k, v in clipped.items() if v)
                + "; SecAgg+ clipped them, so the sum is wrong: raise secagg-clipping-range"
            )
            raise StudyStopped(reason, round=state.round, reason=reason, failed=[])
        if len(summed) < owner.study.min_sites:
            reason = (
                f"only {len(summed)} site(s) replied in round {state.round}; "
                f"min-sites is {owner.study.min_sites}"
            )
            failed = [s.to_json() for s in state.sites.values() if not s.ok]
            raise StudyStopped(reason, round=state.round, reason=reason, failed=failed)
        mean = self._mean(parameters_to_ndarrays(summed[0][1].parameters))
        replies = [
            Message(
                RecordDict({"arrays": mean, "metrics": MetricRecord(dict(fitres.metrics))}),
                dst_node_id=0,
                message_type="train",
            )
            for _, fitres in summed
        ]
        if owner.study.dp in CENTRAL_MODES:
            # the protocol weighted each site by its FitRes num_examples (1 under
            # these modes, client.secagg); the copies of the mean weigh 1 each
            replies = uniform_weights(replies)
            weights = [float(fitres.num_examples) for _, fitres in summed]
            state.privacy = dp_aggregation(owner.study, owner.inner, weights)
        t0 = time.perf_counter()
        self.result, _ = owner.inner.aggregate_train(state.round, replies)
        state.aggregate_s = time.perf_counter() - t0
        return None, {}

    def _mean(self, ndarrays: list[np.ndarray]) -> ArrayRecord:
        """The unmasked mean (float64 from Flower's dequantisation) in the model's
        names and dtypes."""
        if len(ndarrays) != len(self.template):
            raise ValueError(
                f"SecAgg+ returned {len(ndarrays)} arrays for a model of {len(self.template)}"
            )
        out = {}
        for (name, ref), arr in zip(self.template.items(), ndarrays, strict=True):
            if arr.shape != ref.shape:
                raise ValueError(f"SecAgg+ returned {name} shaped {arr.shape}, not {ref.shape}")
            out[name] = Array(np.asarray(arr, dtype=ref.dtype))
        return ArrayRecord(out)

    # the rest of the legacy interface: evaluation is medfed's (see the module docstring)
    def initialize_parameters(self, client_manager):
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class StageGrid(Grid):
    """The ReportingGrid as SecAggPlusWorkflow sees it: every stage's messages
    counted per site, a site's error status (or a reply from a node that is
    not the site it claims) handed to the protocol as an error reply, i.e. a
    dropout, and a `reply` progress event per reply with the round's number.

    It sends with the ReportingGrid's own push and pull, not its
    send_and_receive, which takes the round from a `config` record that
    SecAgg+ stage messages do not carry."""

    def __init__(self, grid: Grid, owner: SecAggPlusStrategy) -> None:
        self.grid, self.owner = grid, owner
        self.stages: dict[str, dict] = {}  # stage -> {"seconds", "sites": {site: {up, down}}}
        self.contributed: set[int | str] = set()  # sites whose masked vector arrived

    # -- the wrapped Grid ---------------------------------------------------------------------
    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    # -- one stage --------------------------------------------------------------------------
    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        if not messages:
            return []
        stage = _stage_of(messages[0])
        record = self.stages.setdefault(stage, {"seconds": 0.0, "sites": {}})
        state = self.owner.state
        for msg in messages:
            self._count(record, msg.metadata.dst_node_id, "down", msg)
            if stage == Stage.COLLECT_MASKED_VECTORS:
                entry = state.site(self._site(msg.metadata.dst_node_id))
                entry.bytes["model_down"] += array_bytes(msg.content["fitins.parameters"])
        start = time.perf_counter()
        replies = self._exchange(messages, timeout)
        record["seconds"] += time.perf_counter() - start
        answered, out = set(), []
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            out.append(self._accept(stage, record, reply))
        for msg in messages:
            if msg.metadata.dst_node_id not in answered:
                entry = state.site(self._site(msg.metadata.dst_node_id))
                entry.ok = False
                entry.error = entry.error or (
                    f"no reply in SecAgg+ stage {stage} within round-timeout = "
                    f"{self.owner.study.round_timeout:g} s (the site stopped or is too slow)"
                )
        return out

    def _exchange(self, messages: list[Message], timeout: float | None) -> list[Message]:
        """Push, then pull until every reply is in or `timeout` passes (server.grid's
        exchange: a vanished node's error reply is that node's)."""
        events = getattr(self.grid, "events", None)

        def report(done: int) -> None:
            if events is not None:
                events.emit(
                    "reply", round=self.owner.state.round, phase="train", done=done,
                    of=len(messages),
                )  # fmt: skip

        return exchange(self, messages, timeout, getattr(self.grid, "poll_s", 0.1), report)

    def _accept(self, stage: str, record: dict, reply: Message) -> Message:
        """Account one reply; the reply as the protocol should see it."""
        node = reply.metadata.src_node_id
        site = self._site(node)
        entry = self.owner.state.site(site)
        if reply.has_error():
            entry.ok = False
            entry.error = (
                f"SecAgg+ stage {stage}: flower error {reply.error.code}: {reply.error.reason}"
            )
            return reply
        self._count(record, node, "up", reply)
        status = reply.content.get("status")
        claimed = status.get("site") if status is not None else None
        problem = None
        if claimed is None or int(claimed) != site:
            problem = (
                f"the reply claims site {claimed!r} but came from the node enrolled as "
                f"site {site}; refused"
            )
        elif status.get("error"):
            problem = str(status["error"])
        if problem is not None:
            entry.ok = False
            entry.error = f"SecAgg+ stage {stage}: {problem}"
            error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=entry.error)
            return Message(error=error, metadata=reply.metadata)
        if stage == Stage.COLLECT_MASKED_VECTORS:
            self._collected(site, reply)
        return reply

    def _collected(self, site: int | str, reply: Message) -> None:
        """A site's masked vector arrived: its model bytes, examples, seconds and loss."""
        state = self.owner.state
        entry = state.site(site)
        masked = reply.content.config_records[RECORD_KEY_CONFIGS][SecAggKey.MASKED_PARAMETERS]
        entry.bytes["model_up"] += sum(len(b) for b in masked)
        fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
        metrics = fitres.metrics
        # under a central dp mode the protocol's weight is 1, the count is in the metrics
        entry.examples = int(metrics.get("num-examples", fitres.num_examples))
        entry.seconds = {
            "encrypt": float(metrics.get("encrypt-s", 0.0)),
            "train": float(metrics.get("train-s", 0.0)),
            "decrypt": float(metrics.get("decrypt-s", 0.0)),
        }
        if "train-loss" in metrics:
            state.train_loss[site] = float(metrics["train-loss"])
        entry.ok, entry.error = True, None
        self.contributed.add(site)
        if isinstance(site, int):  # the next round's max_weight uses the count it trained on
            self.owner.examples[site] = entry.examples

    def _count(self, record: dict, node: int, direction: str, msg: Message) -> None:
        site = self._site(node)
        entry = self.owner.state.site(site)
        size = message_bytes(msg)
        entry.bytes[f"message_{direction}"] += size
        per_site = record["sites"].setdefault(entry.site, {"up": 0, "down": 0})
        per_site[direction] += size

    def _site(self, node: int) -> int | str:
        return self.owner.directory.site_of(node)


def _stage_of(msg: Message) -> str:
    if msg.metadata.message_type == EXAMPLES:
        return "examples"
    configs = msg.content.config_records
    if RECORD_KEY_CONFIGS in configs and SecAggKey.STAGE in configs[RECORD_KEY_CONFIGS]:
        return str(configs[RECORD_KEY_CONFIGS][SecAggKey.STAGE])
    return msg.metadata.message_type
