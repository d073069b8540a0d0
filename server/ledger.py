"""One round's ledger: what the round asked, what came back, and its record.

A `RoundLedger` is opened when a round begins (after the rejoin wait) and
owns that round's state, whichever round loop runs it (a plain round or
SecAgg+'s stages):
- the sites asked to train (`sent_train`: their nodes), the sites missing
  when it began, and per site its `SiteRecord`: bytes by kind and direction,
  examples, seconds, ok, error, sampled, reconstruction and peers;
- every message's bytes as the grid sends and receives it (`sent`,
  `received`: server.grid calls these, once for every message of a round);
- a site's refusal with its reason (`refuse`), its training as its checked
  metrics give it (`trained`: the one place a reply's examples, seconds and
  loss are read), a missing reply (`no_reply`);
- the min-sites stop (`require_sites`), and the round's record for
  rounds.jsonl (`record`), written with the study's ResultWriter (`write`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.serde import recorddict_to_proto

from study import protocol, transport
from study.schema import RoundRecord, SiteRecord
from study.sites import SiteId

NOT_CONNECTED = "took no part in this round's training (not connected when it began)"
SECONDS = {"encrypt": protocol.ENCRYPT_S, "train": protocol.TRAIN_S, "decrypt": protocol.DECRYPT_S}
RECON = {"mse": protocol.RECON_MSE, "psnr": protocol.RECON_PSNR, "ssim": protocol.RECON_SSIM}


def no_reply_reason(timeout: float, where: str = "") -> str:
    """Why a site is failed when its reply did not come (`where`: " in SecAgg+ stage X")."""
    return f"no reply{where} within round-timeout = {timeout:g} s (the site stopped or is too slow)"


class StudyStopped(RuntimeError):
    """Fewer than `min-sites` sites replied: the study cannot go on."""

    def __init__(self, message: str, *, round: int, reason: str, failed: list[dict]) -> None:
        super().__init__(message)
        self.round, self.reason, self.failed = round, reason, failed


# -- what a message weighs ----------------------------------------------------------------
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


# -- the ledger ----------------------------------------------------------------------------
@dataclass
class RoundLedger:
    """What one round has seen so far (module docstring)."""

    round: int
    started: float = field(default_factory=time.perf_counter)
    sites: dict[SiteId, SiteRecord] = field(default_factory=dict)
    sent_train: set[int] = field(default_factory=set)  # the nodes asked to train
    shared_counts: dict[SiteId, float] = field(default_factory=dict)
    shares: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # site -> containers
    missing: set[SiteId] = field(default_factory=set)  # study sites not connected
    privacy: dict = field(default_factory=dict)  # central dp: the aggregation's weights, noise
    train_loss: dict[SiteId, float] = field(default_factory=dict)
    fed_metrics: dict[str, float] = field(default_factory=dict)
    aggregate_s: float = 0.0
    extra: dict = field(default_factory=dict)  # the record's other entries (secure_aggregation)
    # message bytes by kind of message (server.grid: "train", a SecAgg+ stage, ...)
    # -> site name -> {"up": bytes, "down": bytes}
    by_kind: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def site(self, key: SiteId) -> SiteRecord:
        if key not in self.sites:
            self.sites[key] = SiteRecord(site=str(key))
        return self.sites[key]

    def begin_without(self, missing: Iterable[SiteId]) -> None:
        """Study sites not connected when the round began: failed, with that reason."""
        self.missing = set(missing)
        for site in self.missing:
            self.site(site).error = NOT_CONNECTED

    # -- bytes, as the grid sends and receives them ---------------------------------------
    def sent(self, site: SiteId, msg: Message, kind: str) -> None:
        """A message of `kind` to `site`, before it is packed: its serialized bytes, the
        model it carries, peers' ciphertext and key grants."""
        entry, content = self.site(site), msg.content
        self._count(entry, kind, "down", message_bytes(msg))
        entry.bytes["model_down"] += sum(array_bytes(r) for r in content.array_records.values())
        if protocol.PEERS in content:
            entry.bytes["ciphertext_down"] += sum(len(b) for b in content[protocol.PEERS].values())
        if protocol.KEYS in content:
            entry.bytes["grant_down"] += record_payload_bytes(content[protocol.KEYS])

    def received(self, site: SiteId, reply: Message, kind: str) -> None:
        """A reply of `kind` from `site` (not an error), unpacked: its serialized bytes."""
        self._count(self.site(site), kind, "up", message_bytes(reply))

    def _count(self, entry: SiteRecord, kind: str, direction: str, size: int) -> None:
        entry.bytes[f"message_{direction}"] += size
        per_site = self.by_kind.setdefault(kind, {}).setdefault(entry.site, {"up": 0, "down": 0})
        per_site[direction] += size

    # -- outcomes --------------------------------------------------------------------------
    def refuse(self, site: SiteId, reason: str) -> None:
        entry = self.site(site)
        entry.ok, entry.error = False, reason

    def no_reply(self, site: SiteId, reason: str) -> None:
        """`site` did not answer (an earlier error it had stays its reason)."""
        entry = self.site(site)
        entry.ok, entry.error = False, entry.error or reason

    def trained(self, site: SiteId, values: dict[str, float]) -> SiteRecord:
        """`site` trained: its examples, seconds and loss from its checked metrics
        (protocol.reply_metrics)."""
        entry = self.site(site)
        entry.examples = int(values[protocol.NUM_EXAMPLES])
        entry.seconds = {k: values[name] for k, name in SECONDS.items()}
        self.train_loss[site] = values[protocol.TRAIN_LOSS]
        entry.ok, entry.error = True, None
        return entry

    def shared(self, site: SiteId, values: dict[str, float], images: bytes, labels: bytes):
        """`site` shared ciphertext: its bytes, count and the reconstruction it measured."""
        entry = self.site(site)
        entry.bytes["ciphertext_up"] += len(images) + len(labels)
        entry.recon = {k: values[name] for k, name in RECON.items()}
        self.shared_counts[site] = values[protocol.SHARED_IMAGES]
        self.shares[site.index] = (images, labels)

    def failures(self) -> list[dict]:
        return [s.to_json() for s in self.sites.values() if not s.ok]

    def require_sites(self, replied: int, min_sites: int, *, sampled: int) -> None:
        """The min-sites stop: StudyStopped when fewer than `min_sites` of the
        `sampled` sites replied."""
        if replied >= min_sites:
            return
        failed = self.failures()
        reason = f"only {replied} site(s) replied in round {self.round}; min-sites is {min_sites}"
        raise StudyStopped(
            f"round {self.round}: only {replied} of {sampled} sampled "
            f"sites replied (min-sites = {min_sites}). Failures: "
            + "; ".join(f"{f['site']}: {f['error']}" for f in failed),
            round=self.round,
            reason=reason,
            failed=failed,
        )

    # -- the record ------------------------------------------------------------------------
    def record(self, global_metrics: dict, sampled: set[SiteId]) -> RoundRecord:
        """The round's rounds.jsonl record. `sampled`: the sites asked to train; a site
        neither sampled nor missing with no outcome was left out by fraction-train
        (ok, `sampled: false`), a sampled or missing one took no part."""
        for key, entry in self.sites.items():
            if entry.ok or entry.error is not None:
                continue
            if key in sampled or key in self.missing:
                entry.error = NOT_CONNECTED
            else:  # connected, evaluated, but fraction-train left it out: not a failure
                entry.ok, entry.sampled = True, False
        glob = {
            **global_metrics,
            **{f"fed_{k}": v for k, v in self.fed_metrics.items()},
            **recon_summary(self),
            **train_summary(self),
        }
        record = RoundRecord.build(
            self.round, self.sites.values(), glob, time.perf_counter() - self.started
        )
        if self.privacy:  # completed by server.results.privacy_spent
            record.extra["privacy"] = dict(self.privacy)
        for name, value in self.extra.items():  # one by one: the schema may check each
            record.extra[name] = value
        return record

    def write(self, writer, record: RoundRecord, phases: dict[str, float]) -> None:
        """Append the round's record and phases (server.results.ResultWriter)."""
        writer.append_round(record, phases)


# -- the round's summaries -------------------------------------------------------------------
def recon_summary(ledger: RoundLedger) -> dict[str, float]:
    """The reconstruction the sites that shared measured: the mean weighted by images
    shared (the plain mean when one is not finite) and the worst, per metric."""
    keys = [k for k in sorted(ledger.sites) if ledger.sites[k].ok and ledger.shared_counts.get(k)]
    if not keys:
        return {}
    w = np.array([ledger.shared_counts[k] for k in keys])
    out = {}
    for name in RECON:
        vals = np.array([ledger.sites[k].recon[name] for k in keys])
        out[f"recon_{name}_mean"] = (
            float(np.sum(w * vals) / np.sum(w))
            if np.all(np.isfinite(vals))
            else float(np.mean(vals))
        )
        worst = np.max(vals) if name == "mse" else np.min(vals)
        out[f"recon_{name}_worst"] = float(worst)
    return out


def train_summary(ledger: RoundLedger) -> dict[str, float]:
    """The example-weighted training loss of the sites that trained, and their count."""
    keys = [k for k in sorted(ledger.sites) if ledger.sites[k].ok and k in ledger.train_loss]
    if not keys:
        return {}
    w = np.array([ledger.sites[k].examples for k in keys], dtype=float)
    losses = [ledger.train_loss[k] for k in keys]
    return {"train_loss": float(np.sum(w * losses) / w.sum()), "sites_ok": len(keys)}


def weighted_mean(rows: list[dict]) -> dict[str, float]:
    """The example-weighted mean of each metric every row has (rows with no examples
    left out; a value that is not finite left out of its metric's mean, NaN when
    none is finite)."""
    rows = [r for r in rows if r.get(protocol.NUM_EXAMPLES, 0) > 0]
    if not rows:
        return {}
    w = np.array([r[protocol.NUM_EXAMPLES] for r in rows], dtype=float)
    keys = sorted(set.intersection(*(set(r) for r in rows)) - {protocol.NUM_EXAMPLES})
    out = {}
    for k in keys:
        vals = np.array([r[k] for r in rows], dtype=float)
        mask = np.isfinite(vals)
        out[k] = float(np.sum(w[mask] * vals[mask]) / w[mask].sum()) if mask.any() else math.nan
    return out
