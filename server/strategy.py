"""medfed's strategy: any of Flower's, with the study's exchange and accounting around it.

`MedfedStrategy` holds a `flwr.serverapp.strategy` strategy chosen by name
(`build_strategy`) and runs on Flower's own round loop (`Strategy.start`).
Around the wrapped strategy it
- attaches to each train message the peers' ciphertext of the last round
  under the `consortium` exchange (to the sites the grant policy lets read
  it), and the key grants and certificates the site needs (server.grants);
- measures every message (serialized bytes, model bytes, ciphertext bytes)
  per site, round and direction;
- stores the sites' ciphertext in the encrypted archive, unread, and takes
  it out of the replies, so the wrapped strategy sees only model and metrics;
- records a site that fails, sends an error or does not reply within
  `round-timeout` as failed, with the reason, and stops the study when fewer
  than `min-sites` of the sampled sites replied; a site that `fraction-train`
  left out of a round is recorded `sampled: false`, not failed;
- under a central `dp` mode, has the wrapped strategy average the sites'
  clipped updates with equal weights and the DP wrapper noise that mean for
  the sites that replied, and records the round's aggregation weights and
  effective noise multiplier (study/privacy.py);
- ends each round in `end_round` (Flower's `evaluate_fn`): held-out metrics,
  the rounds.jsonl line, a checkpoint and a progress event.
Sites are known by the node they enrolled from (`SiteDirectory`, as a
`study.sites.SiteId`); a reply that claims another site is refused.

Each round's state is a `server.ledger.RoundLedger`. Every message of a
round is accounted and every reply checked by server.grid's exchange, for
which this class is the `RoundAccount`: it names the kind of each message
and takes a checked train reply's content (`accept`); the rejoin wait is
the site directory's (`SiteDirectory.await_sites`). SecAgg+ rounds
(server/secagg.py) are this class with another training step.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterable

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp import strategy as flwr_strategies
from flwr.serverapp.strategy import Strategy

from server.archive import Archive
from server.enrolment import SiteDirectory
from server.grants import GrantBroker, GrantRefused
from server.ledger import (  # noqa: F401 - array_bytes, message_bytes: imported from here too
    NOT_CONNECTED,
    RoundLedger,
    StudyStopped,
    array_bytes,
    message_bytes,
    no_reply_reason,
    weighted_mean,
)
from server.progress import Events
from study import protocol, transport
from study.config import STRATEGIES, Study
from study.protocol import PeerShares, reply_metrics
from study.schema import RoundRecord
from study.sites import SiteId


def build_strategy(study: Study) -> Strategy:
    """The Flower strategy the study names, configured from the study."""
    if study.strategy not in STRATEGIES:
        raise ValueError(
            f"strategy {study.strategy!r} is not supported; valid: {', '.join(STRATEGIES)}"
        )
    cls = getattr(flwr_strategies, study.strategy)
    params = inspect.signature(cls.__init__).parameters
    options = {
        "fraction_train": study.fraction_train,
        "fraction_evaluate": 1.0,
        "min_train_nodes": study.min_sites,
        "min_evaluate_nodes": study.min_sites,
        # sample from the sites that are connected now: a site that went away
        # is recorded failed, and the round goes on with min-sites
        "min_available_nodes": study.min_sites,
    }
    if "proximal_mu" in params:
        options["proximal_mu"] = study.proximal_mu
    if "client_learning_rate" in params:  # QFedAvg: the sites' step size and loss key
        options["client_learning_rate"] = study.learning_rate
        options["train_loss_key"] = protocol.TRAIN_LOSS
    return with_differential_privacy(
        study, cls(**{k: v for k, v in options.items() if k in params})
    )


def with_differential_privacy(study: Study, strategy: Strategy) -> Strategy:
    """Flower's central-DP wrapper the study's `dp` names around `strategy`.

    client-fixed / client-adaptive: the sites clip their update (Flower's
    clipping mods, client/client_app.py) and the server adds Gaussian noise
    to the aggregate; server-fixed: the server clips each update and adds the
    noise. The noise is on the aggregate, so these protect against whoever
    holds the global model, not against the server (study/privacy.py).
    local-dpsgd adds its noise inside each site's training instead.
    The wrapper and the weights are the mode's entry in study.dp's registry
    (`DpMode.wrap_strategy`: for client-adaptive the clipped-count noise is
    max(sites / 20, z)).

    Flower's noise, z * C / n, covers one site's influence only on an
    unweighted mean of n clipped updates, so under these modes `strategy`
    weights every site by UNIFORM_WEIGHT (1 for each, `uniform_weights`)
    instead of its number of examples, and `MedfedStrategy` tells the wrapper
    how many updates it averages each round (`dp_aggregation`).
    """
    from study.dp import dp_mode
    from study.privacy import UNIFORM_WEIGHT, check_privacy, sites_sampled

    check_privacy(study)
    mode = dp_mode(study.dp)  # the registry: which wrapper, how the sites are weighted
    if mode.aggregation_weights == "uniform":
        strategy.weighted_by_key = UNIFORM_WEIGHT  # a FedAvg (check_privacy)
    return mode.wrap_strategy(
        strategy,
        noise_multiplier=study.dp_noise_multiplier,
        clipping_norm=study.dp_clipping_norm,
        sites=sites_sampled(study),
    )


def uniform_weights(replies: list[Message]) -> list[Message]:
    """The replies, each weighing 1 for the study's strategy (UNIFORM_WEIGHT)."""
    from study.privacy import UNIFORM_WEIGHT

    for reply in replies:
        reply.content[protocol.METRICS][UNIFORM_WEIGHT] = 1.0
    return replies


def dp_aggregation(study: Study, wrapper: Strategy, weights: list[float]) -> dict:
    """Tell Flower's DP wrapper that this round averages len(weights) updates
    (its noise is z * C over that many), and the round's `privacy` entries:
    how the updates were weighted and the noise multiplier that gave
    (study.privacy.effective_noise_multiplier)."""
    from study.privacy import effective_noise_multiplier

    wrapper.num_sampled_clients = len(weights)
    count_noise = getattr(wrapper, "clipped_count_stddev", None)
    return {
        "aggregation_weights": "uniform" if len(set(weights)) == 1 else "examples",
        "effective_noise_multiplier": effective_noise_multiplier(
            wrapper.noise_multiplier,
            wrapper.num_sampled_clients,
            weights,
            clipped_count_stddev=count_noise if study.dp == "client-adaptive" else None,
        ),
    }


def reply_weights(strategy: Strategy, replies: list[Message]) -> list[float]:
    """Each reply's weight in the mean: the metric the (wrapped) strategy weights by."""
    inner = getattr(strategy, "strategy", strategy)
    key = getattr(inner, "weighted_by_key", protocol.NUM_EXAMPLES)
    return [float(r.content[protocol.METRICS][key]) for r in replies]


# the end of a round: (its ledger, global arrays) -> None (results, checkpoint, progress)
RoundEnd = Callable[[RoundLedger, ArrayRecord], None]


class MedfedStrategy(Strategy):
    def __init__(
        self,
        inner: Strategy,
        study: Study,
        *,
        directory: SiteDirectory,
        archive: Archive,
        grants: GrantBroker,
        end_round: RoundEnd,
        round_offset: int = 0,
        pending_share: dict[int, tuple[bytes, bytes]] | None = None,
        events: Events | None = None,
    ) -> None:
        self.inner, self.study, self.events = inner, study, events
        self.directory, self.archive, self._end_round = directory, archive, end_round
        self.grants = grants
        self.round_timeout = study.round_timeout
        self.offset = round_offset  # rounds done before a resume
        self.pending_share = dict(pending_share or {})  # site -> containers of last round
        # site -> the reconstruction it measured on them (not kept across a resume)
        self.pending_recon: dict[int, dict[str, float]] = {}
        self.ledger: RoundLedger | None = None
        self.model_layout: dict[str, tuple[str, tuple[int, ...]]] = {}  # the model sent this round

    def summary(self) -> None:
        self.inner.summary()

    # -- train -------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        rnd = server_round + self.offset
        ledger = self._begin_round(rnd, grid)
        self.model_layout = {name: (a.dtype, tuple(a.shape)) for name, a in arrays.items()}
        out = []
        for msg in self.inner.configure_train(rnd, arrays, config, grid):
            msg = self._attach_peers(msg)
            ledger.sent_train.add(msg.metadata.dst_node_id)
            out.append(msg)
        return out

    def _begin_round(self, rnd: int, grid: Grid) -> RoundLedger:
        """A new round's ledger, once the sites that went have had `rejoin-wait` seconds
        to come back: a study site still not connected (a hospital that stopped, or
        restarts slowly) is in this round's record, failed with that reason."""
        started = time.perf_counter()  # a round's seconds include any wait for a site
        missing = self.directory.await_sites(grid, rnd, events=self.events)
        for site, cert in self.directory.certificates.items():
            self.grants.enrol(site, cert)
        self.ledger = RoundLedger(rnd, started=started)
        self.ledger.begin_without(missing)
        return self.ledger

    def _attach_peers(self, msg: Message) -> Message:
        """Consortium: give each site its peers' ciphertext of the last round; and the
        key grants and certificates it needs."""
        node = msg.metadata.dst_node_id
        site = self.directory.site_of(node)
        extra = {}
        if site.is_site:
            peers = {
                j: blobs
                for j, blobs in self.pending_share.items()
                if j != site.index and self.grants.may_read(j, site.index)
            }
            if self.study.exchange == "consortium" and peers:
                extra[protocol.PEERS] = PeerShares(peers).to_record()
            keys = self.grants.outgoing(site.index, self.ledger.round)
            if keys is not None:
                extra[protocol.KEYS] = keys
        if extra:
            # strategies share one RecordDict among all messages: copy before adding
            content = RecordDict({**dict(msg.content.items()), **extra})
            msg = Message(content=content, message_type=msg.metadata.message_type, dst_node_id=node)
        return msg

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The replies server.grid accepted (a refused one arrives as an error reply,
        its site's failure already recorded), in site order, aggregated."""
        ledger = self.ledger
        good = self._account_train_replies(list(replies))
        ledger.require_sites(len(good), self.study.min_sites, sampled=len(ledger.sent_train))
        from study.privacy import CENTRAL_MODES

        if self.study.dp in CENTRAL_MODES:
            good = uniform_weights(good)
            ledger.privacy = dp_aggregation(self.study, self.inner, reply_weights(self.inner, good))
        t0 = time.perf_counter()
        arrays, metrics = self.inner.aggregate_train(ledger.round, good)
        ledger.aggregate_s = time.perf_counter() - t0
        return self._as_sent(arrays), metrics

    def _account_train_replies(self, replies: list[Message]) -> list[Message]:
        """The train replies that count, in site order (a fixed order: reproducible
        float sums): the accepted ones; a sampled site none of `replies` answers
        for did not reply (server.grid records that too; a reply left out after
        the exchange, as a test may, counts as none)."""
        answered = {reply.metadata.src_node_id for reply in replies}
        for node in self.ledger.sent_train - answered:
            self.ledger.no_reply(self.site_of(node), no_reply_reason(self.round_timeout))
        accepted = [r for r in replies if not r.has_error()]
        return sorted(accepted, key=lambda r: self.site_of(r.metadata.src_node_id))

    @property
    def state(self) -> RoundLedger | None:
        """The round's ledger (its former name)."""
        return self.ledger

    def _as_sent(self, arrays: ArrayRecord | None) -> ArrayRecord | None:
        """The aggregate in the dtypes of the model sent: FedOpt's update multiplies by
        a float64 step, and the sites (which train in the model's own dtypes) would
        then reply in dtypes the next round refuses."""
        if arrays is None or not self.model_layout:
            return arrays
        out = ArrayRecord()
        for name, array in arrays.items():
            dtype = self.model_layout.get(name, (array.dtype, None))[0]
            out[name] = array if array.dtype == dtype else Array(array.numpy().astype(dtype))
        return out

    def _model_problem(self, arrays) -> str | None:
        """Why a train reply's model cannot be aggregated with the global model sent
        (names, dtypes, shapes, and data that holds exactly that: checked from each
        array's header before any strategy reads it); None when it can."""
        if not isinstance(arrays, ArrayRecord):
            return "no model arrays"
        names, want = set(arrays.keys()), set(self.model_layout)
        if names != want:
            odd = sorted(names - want)[:3] + sorted(f"no {n}" for n in want - names)[:3]
            return "arrays " + ", ".join(odd)
        for name, (dtype, shape) in self.model_layout.items():
            problem = transport.array_problem(arrays[name], dtype, shape)
            if problem:
                return f"{name}: {problem}"
        return None

    # -- the round's messages, as server.grid exchanges them (RoundAccount) ---------------
    def site_of(self, node: int) -> SiteId:
        return self.directory.site_of(node)

    def kind(self, msg: Message) -> str | None:
        kind = msg.metadata.message_type
        return kind if kind in (protocol.TRAIN, protocol.EVALUATE) else None

    def label(self, kind: str) -> str | None:
        # a site's failure to evaluate is not its failure in the round
        return None if kind == protocol.EVALUATE else ""

    def accept(self, site: SiteId, kind: str, reply: Message) -> str | None:
        return self._accept_train(site, reply) if kind == protocol.TRAIN else None

    def exchanged(self, kind: str, messages: list[Message], seconds: float) -> None:
        ledger = self.ledger
        if kind == protocol.TRAIN and self.study.exchange == "consortium":
            self.pending_share = dict(ledger.shares)
            self.pending_recon = {
                site: dict(ledger.site(SiteId.site(site)).recon) for site in ledger.shares
            }

    def _accept_train(self, site: SiteId, reply: Message) -> str | None:
        """Take one site's checked train reply (its status is server.grid's to check)
        into the round: bytes, metrics, grants, shared images; why it is refused, or
        None. Everything is read and checked before anything is kept (train loss,
        archive, shares), so a refused reply leaves no trace but its bytes and its
        error; any exception is the grid's refusal."""
        ledger, content = self.ledger, reply.content
        status = content[protocol.STATUS]
        entry = ledger.site(site)
        problem = self._model_problem(content.get(protocol.ARRAYS))
        if problem:
            return f"the reply's model is not the study's ({problem}); refused"
        values = reply_metrics(content.get(protocol.METRICS), shared=protocol.SHARED in content)
        shared = None
        if protocol.SHARED in content:
            record = content[protocol.SHARED]
            images_ct = record[protocol.SHARED_IMAGES_FIELD]
            labels_ct = record[protocol.SHARED_LABELS_FIELD]
            if not isinstance(images_ct, bytes) or not isinstance(labels_ct, bytes):
                return "the reply's shared images are not bytes; refused"
            shared = (images_ct, labels_ct)
        peers = None
        if protocol.STATUS_PEERS in status:
            try:
                peers = self._peer_records(status)
            except (KeyError, TypeError, ValueError) as exc:
                return f"the reply's peers status is malformed ({exc}); refused"
        if protocol.GRANTS in content:
            try:
                entry.bytes["grant_up"] += self.grants.incoming(
                    site.index, ledger.round, content[protocol.GRANTS]
                )
            except GrantRefused as exc:
                return str(exc)
            del content[protocol.GRANTS]
        entry.bytes["model_up"] += array_bytes(content[protocol.ARRAYS])
        ledger.trained(site, values)
        if shared is not None:
            images_ct, labels_ct = shared
            ledger.shared(site, values, images_ct, labels_ct)
            self.archive.put(images_ct, site=entry.site, server_round=ledger.round, kind="images")
            self.archive.put(labels_ct, site=entry.site, server_round=ledger.round, kind="labels")
            del content[protocol.SHARED]  # strategies see only the model and metrics
        if peers is not None:
            entry.peers = peers
        del content[protocol.STATUS]
        self.grants.confirmed(site.index)
        return None

    def _peer_records(self, status: ConfigRecord) -> dict[str, dict[str, float]]:
        """A site's report of the peers' images it decrypted, with the
        reconstruction each grantor measured on them (the grantee decrypts with
        the grantor's own material, so it sees that reconstruction)."""
        nan = dict.fromkeys(("mse", "psnr", "ssim"), math.nan)
        peers, counts = list(status[protocol.STATUS_PEERS]), list(status[protocol.PEER_IMAGES])
        if len(peers) != len(counts):
            raise ValueError(f"{len(peers)} peers but {len(counts)} image counts")
        return {
            str(SiteId.site(int(j))): {"images": int(n), **self.pending_recon.get(int(j), nan)}
            for j, n in zip(peers, counts, strict=True)
        }

    # -- evaluate ----------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return list(self.inner.configure_evaluate(self.ledger.round, arrays, config, grid))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord:
        """Federated evaluation: the example-weighted mean of the sites' test
        metrics. Computed here, not by the wrapped strategy, because a site
        with no test images replies with num-examples = 0 and no metrics,
        which Flower's consistency check refuses."""
        rows = {}
        for reply in replies:
            if not reply.has_error() and protocol.METRICS in reply.content:
                rows[self.site_of(reply.metadata.src_node_id)] = dict(
                    reply.content[protocol.METRICS]
                )
        self.ledger.fed_metrics = weighted_mean([rows[k] for k in sorted(rows)])
        return MetricRecord({k: v for k, v in self.ledger.fed_metrics.items() if math.isfinite(v)})

    # -- the end of a round --------------------------------------------------------------
    def end_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's evaluate_fn: called with round 0 before the first round
        (nothing to do) and after each round."""
        if server_round == 0 or self.ledger is None:
            return None
        self._end_round(self.ledger, arrays)
        return None

    def round_record(self, global_metrics: dict) -> RoundRecord:
        sampled = {self.site_of(node) for node in self.ledger.sent_train}
        return self.ledger.record(global_metrics, sampled)
