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
Sites are known by the node they enrolled from (`SiteDirectory`); a reply
that claims another site is refused.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid
from flwr.serverapp import strategy as flwr_strategies
from flwr.serverapp.strategy import Strategy

from server.archive import Archive
from server.enrolment import SiteDirectory
from server.grants import GrantBroker, GrantRefused
from server.progress import Events
from study import transport
from study.config import STRATEGIES, Study
from study.schema import RoundRecord, SiteRecord

NOT_CONNECTED = "took no part in this round's training (not connected when it began)"


class StudyStopped(RuntimeError):
    """Fewer than `min-sites` sites replied: the study cannot go on."""

    def __init__(self, message: str, *, round: int, reason: str, failed: list[dict]) -> None:
        super().__init__(message)
        self.round, self.reason, self.failed = round, reason, failed


# a train reply's metrics: name -> (lowest, highest) it may be; recon-* only with shares.
# Counts and seconds must be finite; what a site measured (its loss, the reconstruction)
# may be NaN or infinite, an honest report (a diverged loss, an exact PSNR) that the
# round record shows as such.
REPLY_METRICS = {
    "num-examples": (0, 2**31),
    "encrypt-s": (0.0, 1e7),
    "train-s": (0.0, 1e7),
    "decrypt-s": (0.0, 1e7),
    "train-loss": (-math.inf, math.inf),
}
SHARE_METRICS = {
    "recon-mse": (0.0, math.inf),
    "recon-psnr": (-math.inf, math.inf),
    "recon-ssim": (-1.0, 1.0),
    "shared-images": (0, 2**31),
}
MEASURED = {"train-loss", "recon-mse", "recon-psnr", "recon-ssim"}


def reply_metrics(metrics, *, shared: bool) -> dict[str, float]:
    """The numbers a train reply must carry, checked (ValueError names the metric):
    present, numbers, within bounds (a measurement may also be NaN)."""
    if not isinstance(metrics, MetricRecord):
        raise ValueError("no metrics record")
    wanted = {**REPLY_METRICS, **(SHARE_METRICS if shared else {})}
    out = {}
    for name, (low, high) in wanted.items():
        if name not in metrics:
            raise ValueError(f"metric {name!r} is missing")
        value = metrics[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"metric {name!r} is not a number")
        value = float(value)
        if not (low <= value <= high or (name in MEASURED and math.isnan(value))):
            raise ValueError(f"metric {name!r} = {value:g} is outside [{low:g}, {high:g}]")
        out[name] = value
    return out


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
        options["train_loss_key"] = "train-loss"
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
        reply.content["metrics"][UNIFORM_WEIGHT] = 1.0
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
    key = getattr(inner, "weighted_by_key", "num-examples")
    return [float(r.content["metrics"][key]) for r in replies]


def message_bytes(msg: Message) -> int:
    """Serialized (protobuf) size of a message's content as it travels (packed,
    study.transport): every record it carries, keys and framing included. The
    envelope (random node and message ids, timestamps: about 100 bytes) is left
    out so that a study's byte counts are reproducible to the byte."""
    content = msg.content
    if not transport.is_packed(content):
        content = transport.pack(content)
    return recorddict_to_proto(content).ByteSize()


def array_bytes(record: ArrayRecord) -> int:
    return sum(len(a.data) for a in record.values())


def record_payload_bytes(record: ConfigRecord) -> int:
    """Bytes of a record's bytes and text values (grants, certificates)."""
    return sum(
        len(v) if isinstance(v, bytes) else len(v.encode()) if isinstance(v, str) else 0
        for v in record.values()
    )


@dataclass
class RoundState:
    """What one round has seen so far."""

    round: int
    started: float = field(default_factory=time.perf_counter)
    sites: dict[int | str, SiteRecord] = field(default_factory=dict)
    sent_train: set[int] = field(default_factory=set)
    shared_counts: dict[int | str, float] = field(default_factory=dict)
    missing: set[int | str] = field(default_factory=set)  # study sites not connected
    privacy: dict = field(default_factory=dict)  # central dp: the aggregation's weights, noise
    train_loss: dict[int | str, float] = field(default_factory=dict)
    fed_metrics: dict[str, float] = field(default_factory=dict)
    aggregate_s: float = 0.0

    def site(self, key: int | str) -> SiteRecord:
        if key not in self.sites:
            self.sites[key] = SiteRecord(site=f"site-{key}" if isinstance(key, int) else key)
        return self.sites[key]


# the end of a round: (round state, global arrays) -> None (results, checkpoint, progress)
RoundEnd = Callable[[RoundState, ArrayRecord], None]


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
        self.offset = round_offset  # rounds done before a resume
        self.pending_share = dict(pending_share or {})  # site -> containers of last round
        # site -> the reconstruction it measured on them (not kept across a resume)
        self.pending_recon: dict[int, dict[str, float]] = {}
        self.state: RoundState | None = None
        self.model_layout: dict[str, tuple[str, tuple[int, ...]]] = {}  # the model sent this round

    def summary(self) -> None:
        self.inner.summary()

    # -- train -------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        rnd = server_round + self.offset
        state = self._begin_round(rnd, grid)
        self.model_layout = {name: (a.dtype, tuple(a.shape)) for name, a in arrays.items()}
        out = []
        for msg in self.inner.configure_train(rnd, arrays, config, grid):
            msg = self._attach_peers(msg)
            state.sent_train.add(msg.metadata.dst_node_id)
            out.append(msg)
        return out

    def _begin_round(self, rnd: int, grid: Grid) -> RoundState:
        """A new round's state, once the sites that went have had `rejoin-wait` seconds
        to come back: a study site still not connected (a hospital that stopped, or
        restarts slowly) is in this round's record, failed with that reason."""
        started = time.perf_counter()  # a round's seconds include any wait for a site
        missing = self.directory.await_sites(grid, rnd, events=self.events)
        for site, cert in self.directory.certificates.items():
            self.grants.enrol(site, cert)
        self.state = state = RoundState(rnd, started=started)
        state.missing = set(missing)
        for site in missing:
            state.site(site).error = NOT_CONNECTED
        return state

    def _attach_peers(self, msg: Message) -> Message:
        """Consortium: give each site its peers' ciphertext of the last round."""
        node = msg.metadata.dst_node_id
        site = self.directory.site_of(node)
        extra = {}
        if isinstance(site, int):
            peers = {
                j: blobs
                for j, blobs in self.pending_share.items()
                if j != site and self.grants.may_read(j, site)
            }
            if self.study.exchange == "consortium" and peers:
                record = ConfigRecord()
                for j, (images_ct, labels_ct) in sorted(peers.items()):
                    record[f"site-{j}-images"] = images_ct
                    record[f"site-{j}-labels"] = labels_ct
                extra["peers"] = record
            keys = self.grants.outgoing(site, self.state.round)
            if keys is not None:
                extra["keys"] = keys
        if extra:
            # strategies share one RecordDict among all messages: copy before adding
            content = RecordDict({**dict(msg.content.items()), **extra})
            msg = Message(content=content, message_type=msg.metadata.message_type, dst_node_id=node)
        self._account_down(msg)
        return msg

    def _account_down(self, msg: Message) -> None:
        entry = self.state.site(self.directory.site_of(msg.metadata.dst_node_id))
        entry.bytes["model_down"] += array_bytes(msg.content["arrays"])
        entry.bytes["message_down"] += message_bytes(msg)
        if "peers" in msg.content:
            entry.bytes["ciphertext_down"] += sum(len(b) for b in msg.content["peers"].values())
        if "keys" in msg.content:
            entry.bytes["grant_down"] += record_payload_bytes(msg.content["keys"])

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        state = self.state
        good = self._account_train_replies(list(replies))
        if len(good) < self.study.min_sites:  # of the sampled sites
            failed = [s.to_json() for s in state.sites.values() if not s.ok]
            reason = (
                f"only {len(good)} site(s) replied in round {state.round}; "
                f"min-sites is {self.study.min_sites}"
            )
            raise StudyStopped(
                f"round {state.round}: only {len(good)} of {len(state.sent_train)} sampled "
                f"sites replied (min-sites = {self.study.min_sites}). Failures: "
                + "; ".join(f"{f['site']}: {f['error']}" for f in failed),
                round=state.round,
                reason=reason,
                failed=failed,
            )
        from study.privacy import CENTRAL_MODES

        if self.study.dp in CENTRAL_MODES:
            good = uniform_weights(good)
            state.privacy = dp_aggregation(self.study, self.inner, reply_weights(self.inner, good))
        t0 = time.perf_counter()
        arrays, metrics = self.inner.aggregate_train(state.round, good)
        state.aggregate_s = time.perf_counter() - t0
        return self._as_sent(arrays), metrics

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

    def _account_train_replies(self, replies: list[Message]) -> list[Message]:
        state = self.state
        good: list[tuple[int, Message]] = []
        shares: dict[int, tuple[bytes, bytes]] = {}
        answered = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            site = self.directory.site_of(node)
            entry = state.site(site)
            if reply.has_error():
                entry.error = f"flower error {reply.error.code}: {reply.error.reason}"
                continue
            entry.bytes["message_up"] += message_bytes(reply)
            try:
                problem = self._account_reply(reply, site, entry, shares)
            except Exception as exc:  # noqa: BLE001 - a site's reply is hostile input
                problem = f"the reply is malformed ({type(exc).__name__}: {exc}); refused"
            if problem:
                entry.error, entry.ok = problem, False
                continue
            entry.ok = True
            self.grants.confirmed(site)
            good.append((site, reply))
        for node in state.sent_train - answered:
            entry = state.site(self.directory.site_of(node))
            entry.error = (
                f"no reply within round-timeout = {self.study.round_timeout:g} s "
                "(the site stopped or is too slow)"
            )
        if self.study.exchange == "consortium":
            self.pending_share = shares
            self.pending_recon = {
                site: dict(state.sites[site].recon) for site in shares if site in state.sites
            }
        good.sort(key=lambda item: item[0])  # fixed order: reproducible float sums
        return [m for _, m in good]

    def _account_reply(
        self, reply: Message, site: int, entry: SiteRecord, shares: dict
    ) -> str | None:
        """Account one site's train reply (bytes, metrics, grants, shared images);
        why it is refused, or None. Everything is read and checked before anything
        is kept (train loss, archive, shares), so a refused reply leaves no trace
        but its bytes and its error; any exception is the caller's refusal."""
        state, content = self.state, reply.content
        status = content.get("status")
        claimed = status.get("site") if status is not None else None
        if not isinstance(claimed, int) or isinstance(claimed, bool) or claimed != site:
            return (
                f"the reply claims site {claimed!r} but came from the node enrolled as "
                f"site {site}; refused"
            )
        if status.get("error"):
            return str(status["error"])
        problem = self._model_problem(content.get("arrays"))
        if problem:
            return f"the reply's model is not the study's ({problem}); refused"
        values = reply_metrics(content.get("metrics"), shared="shared" in content)
        shared = None
        if "shared" in content:
            images_ct, labels_ct = content["shared"]["images"], content["shared"]["labels"]
            if not isinstance(images_ct, bytes) or not isinstance(labels_ct, bytes):
                return "the reply's shared images are not bytes; refused"
            shared = (images_ct, labels_ct)
        peers = None
        if "peers" in status:
            try:
                peers = self._peer_records(status)
            except (KeyError, TypeError, ValueError) as exc:
                return f"the reply's peers status is malformed ({exc}); refused"
        if "grants" in content:
            try:
                entry.bytes["grant_up"] += self.grants.incoming(
                    site, state.round, content["grants"]
                )
            except GrantRefused as exc:
                return str(exc)
            del content["grants"]
        entry.bytes["model_up"] += array_bytes(content["arrays"])
        entry.examples = int(values["num-examples"])
        entry.seconds = {k: values[f"{k}-s"] for k in ("encrypt", "train", "decrypt")}
        state.train_loss[site] = values["train-loss"]
        if shared is not None:
            images_ct, labels_ct = shared
            entry.bytes["ciphertext_up"] += len(images_ct) + len(labels_ct)
            entry.recon = {k: values[f"recon-{k}"] for k in ("mse", "psnr", "ssim")}
            state.shared_counts[site] = values["shared-images"]
            self.archive.put(images_ct, site=entry.site, server_round=state.round, kind="images")
            self.archive.put(labels_ct, site=entry.site, server_round=state.round, kind="labels")
            shares[site] = shared
            del content["shared"]  # strategies see only the model and metrics
        if peers is not None:
            entry.peers = peers
        del content["status"]
        return None

    def _peer_records(self, status: ConfigRecord) -> dict[str, dict[str, float]]:
        """A site's report of the peers' images it decrypted, with the
        reconstruction each grantor measured on them (the grantee decrypts with
        the grantor's own material, so it sees that reconstruction)."""
        nan = dict.fromkeys(("mse", "psnr", "ssim"), math.nan)
        peers, counts = list(status["peers"]), list(status["peer-images"])
        if len(peers) != len(counts):
            raise ValueError(f"{len(peers)} peers but {len(counts)} image counts")
        return {
            f"site-{int(j)}": {"images": int(n), **self.pending_recon.get(int(j), nan)}
            for j, n in zip(peers, counts, strict=True)
        }

    # -- evaluate ----------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.inner.configure_evaluate(self.state.round, arrays, config, grid))
        for msg in messages:
            self._account_down(msg)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord:
        """Federated evaluation: the example-weighted mean of the sites' test
        metrics. Computed here, not by the wrapped strategy, because a site
        with no test images replies with num-examples = 0 and no metrics,
        which Flower's consistency check refuses."""
        rows = {}
        for reply in replies:
            if reply.has_error():
                continue
            site = self.directory.site_of(reply.metadata.src_node_id)
            self.state.site(site).bytes["message_up"] += message_bytes(reply)
            if "metrics" in reply.content:
                rows[site] = dict(reply.content["metrics"])
        self.state.fed_metrics = weighted_mean([rows[k] for k in _by_site(rows)])
        return MetricRecord({k: v for k, v in self.state.fed_metrics.items() if math.isfinite(v)})

    # -- the end of a round --------------------------------------------------------------
    def end_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's evaluate_fn: called with round 0 before the first round
        (nothing to do) and after each round."""
        if server_round == 0 or self.state is None:
            return None
        self._end_round(self.state, arrays)
        return None

    def round_record(self, global_metrics: dict) -> RoundRecord:
        state = self.state
        sampled = {self.directory.site_of(node) for node in state.sent_train}
        for key, entry in state.sites.items():
            if entry.ok or entry.error is not None:
                continue
            if key in sampled or key in state.missing:
                entry.error = NOT_CONNECTED
            else:  # connected, evaluated, but fraction-train left it out: not a failure
                entry.ok, entry.sampled = True, False
        glob = {
            **global_metrics,
            **{f"fed_{k}": v for k, v in state.fed_metrics.items()},
            **recon_summary(state),
            **train_summary(state),
        }
        record = RoundRecord.build(
            state.round, state.sites.values(), glob, time.perf_counter() - state.started
        )
        if state.privacy:  # completed by server.results.privacy_spent
            record.extra["privacy"] = dict(state.privacy)
        return record


def _by_site(keys: Iterable[int | str]) -> list[int | str]:
    """Sites in a fixed order, so that float sums do not depend on reply order."""
    return sorted(keys, key=lambda k: (0, k, "") if isinstance(k, int) else (1, 0, k))


def recon_summary(state: RoundState) -> dict[str, float]:
    keys = [k for k in _by_site(state.sites) if state.sites[k].ok and state.shared_counts.get(k)]
    if not keys:
        return {}
    w = np.array([state.shared_counts[k] for k in keys])
    out = {}
    for name in ("mse", "psnr", "ssim"):
        vals = np.array([state.sites[k].recon[name] for k in keys])
        out[f"recon_{name}_mean"] = (
            float(np.sum(w * vals) / np.sum(w))
            if np.all(np.isfinite(vals))
            else float(np.mean(vals))
        )
        worst = np.max(vals) if name == "mse" else np.min(vals)
        out[f"recon_{name}_worst"] = float(worst)
    return out


def train_summary(state: RoundState) -> dict[str, float]:
    keys = [k for k in _by_site(state.sites) if state.sites[k].ok and k in state.train_loss]
    if not keys:
        return {}
    w = np.array([state.sites[k].examples for k in keys], dtype=float)
    losses = [state.train_loss[k] for k in keys]
    return {"train_loss": float(np.sum(w * losses) / w.sum()), "sites_ok": len(keys)}


def weighted_mean(rows: list[dict]) -> dict[str, float]:
    rows = [r for r in rows if r.get("num-examples", 0) > 0]
    if not rows:
        return {}
    w = np.array([r["num-examples"] for r in rows], dtype=float)
    keys = sorted(set.intersection(*(set(r) for r in rows)) - {"num-examples"})
    out = {}
    for k in keys:
        vals = np.array([r[k] for r in rows], dtype=float)
        mask = np.isfinite(vals)
        out[k] = float(np.sum(w[mask] * vals[mask]) / w[mask].sum()) if mask.any() else math.nan
    return out
