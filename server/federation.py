"""The study's round loop on a Flower Grid, with byte-exact accounting.

Any `flwr.serverapp.strategy` strategy chooses the sites (`configure_train`,
`configure_evaluate`) and aggregates the model (`aggregate_train`); around it
this loop:
- measures every message: serialized bytes, model bytes, ciphertext bytes,
  per site, round and direction;
- stores the sites' ciphertext in the encrypted archive without reading it,
  and forwards it to granted peers under the `consortium` policy;
- records reconstruction and task metrics, wall time of each phase, a
  checkpoint per round, and tolerates failed sites down to `min-sites`.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid

from study.config import Study
from study.task import build_model, evaluate
from server.archive import Archive
from server.results import BYTE_KINDS, ResultWriter
from server.strategies import build_strategy

POLL_S = 0.1
SITE_WAIT_S = 300.0  # how long to wait for every hospital's SuperNode to connect


class StudyStopped(RuntimeError):
    """Fewer than `min-sites` sites replied: the study cannot go on."""


def message_bytes(msg: Message) -> int:
    """Serialized (protobuf) size of a message's content: every record it carries,
    keys and framing included. The envelope (random node and message ids,
    timestamps: about 100 bytes) is left out so that a study's byte counts are
    reproducible to the byte."""
    return recorddict_to_proto(msg.content).ByteSize()


def array_bytes(record: ArrayRecord) -> int:
    return sum(len(a.data) for a in record.values())


@dataclass
class SiteRound:
    """Accounting of one site in one round (one line item of rounds.jsonl)."""

    site: str
    ok: bool = True
    error: str | None = None
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BYTE_KINDS, 0))
    recon: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("mse", "psnr", "ssim"), math.nan)
    )
    examples: int = 0
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("encrypt", "train", "decrypt"), 0.0)
    )
    metrics: dict[str, float] = field(default_factory=dict)  # kept for aggregation, not written

    def to_json(self) -> dict:
        return {
            "site": self.site,
            "ok": self.ok,
            "error": self.error,
            "bytes": dict(self.bytes),
            "recon": dict(self.recon),
            "examples": self.examples,
            "seconds": dict(self.seconds),
        }


Progress = Callable[[dict], None]


class Federation:
    def __init__(self, grid: Grid, study: Study, *, progress: Progress | None = None) -> None:
        self.grid, self.study = grid, study
        self.out = Path(study.out_dir).absolute()
        self.results = ResultWriter(self.out, study)
        self.archive = Archive(self.out / "archive")
        self.progress = progress or (lambda event: None)
        self.node_site: dict[int, int] = {}  # learned from replies
        self.pending_share: dict[int, tuple[bytes, bytes]] = {}  # site -> containers of last round
        self._holdout = None

    # -- setup ------------------------------------------------------------------
    def initial_state(self):
        torch.manual_seed(self.study.seed)
        model = build_model(self.study.modality)
        arrays = ArrayRecord(model.state_dict())
        strategy = build_strategy(self.study)
        start_round = 1
        if self.study.resume:
            ckpt = self.results.last_checkpoint()
            if ckpt is not None:
                start_round = ckpt["round"] + 1
                arrays = ArrayRecord({k: torch.from_numpy(v) for k, v in ckpt["arrays"].items()})
                if ckpt.get("strategy") is not None:
                    strategy = pickle.loads(ckpt["strategy"])
                self.node_site = ckpt.get("node_site", {})
                self.pending_share = ckpt.get("pending_share", {})
                self.results.truncate(ckpt["round"])
                self.archive.truncate_rounds(ckpt["round"])
        else:
            self.results.start()
        return arrays, strategy, start_round

    def wait_for_sites(self, timeout_s: float = SITE_WAIT_S) -> None:
        """Every site must be connected: a federation of another size would
        partition the data differently from what the study says."""
        deadline = time.time() + timeout_s
        while True:
            count = len(list(self.grid.get_node_ids()))
            if count == self.study.num_sites:
                return
            if count > self.study.num_sites or time.time() > deadline:
                raise StudyStopped(
                    f"the federation has {count} SuperNode(s) but the study has num-sites = "
                    f"{self.study.num_sites}; start one SuperNode per site (flwr run: "
                    f'--federation-config "num-supernodes={self.study.num_sites}")'
                )
            time.sleep(1.0)

    # -- the loop ---------------------------------------------------------------
    def run(self) -> dict:
        study = self.study
        self.wait_for_sites()
        arrays, strategy, start_round = self.initial_state()
        self.progress(
            {
                "event": "start",
                "rounds": study.num_rounds,
                "sites": study.num_sites,
                "from_round": start_round,
            }
        )
        for rnd in range(start_round, study.num_rounds + 1):
            t_round = time.perf_counter()
            sites: dict[int | str, SiteRound] = {}
            train_cfg = ConfigRecord({"server-round": rnd})
            messages = list(strategy.configure_train(rnd, arrays, train_cfg, self.grid))
            messages = [self._attach_peers(m, sites) for m in messages]
            t0 = time.perf_counter()
            replies = self._send_and_receive(messages, rnd, "train")
            train_s = time.perf_counter() - t0
            good = self._account_train_replies(rnd, replies, sites)
            if len(good) < study.min_sites:
                failed = [s.to_json() for s in sites.values() if not s.ok]
                self.results.stopped(
                    rnd,
                    f"only {len(good)} site(s) replied in round {rnd}; "
                    f"min-sites is {study.min_sites}",
                    failed,
                )
                raise StudyStopped(
                    f"round {rnd}: only {len(good)} of {len(messages)} sites replied "
                    f"(min-sites = {study.min_sites}); completed rounds are kept in {self.out}. "
                    "Failures: " + "; ".join(f"{f['site']}: {f['error']}" for f in failed)
                )
            t0 = time.perf_counter()
            new_arrays, _ = strategy.aggregate_train(rnd, good)
            aggregate_s = time.perf_counter() - t0
            if new_arrays is not None:
                arrays = new_arrays
            # federated evaluation on each site's held-out patients
            t0 = time.perf_counter()
            eval_msgs = list(
                strategy.configure_evaluate(
                    rnd, arrays, ConfigRecord({"server-round": rnd}), self.grid
                )
            )
            eval_replies = self._send_and_receive(eval_msgs, rnd, "evaluate")
            fed_metrics = self._account_eval_replies(eval_msgs, eval_replies, sites)
            evaluate_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            holdout = self.evaluate_holdout(arrays)
            holdout_s = time.perf_counter() - t0
            glob = {
                **holdout,
                **{f"fed_{k}": v for k, v in fed_metrics.items()},
                **self._recon_summary(sites),
                **self._train_summary(sites),
            }
            line = {
                "round": rnd,
                "sites": [
                    s.to_json() for s in sorted(sites.values(), key=lambda s: _site_order(s.site))
                ],
                "totals": {
                    k: sum(s.bytes[k] for s in sites.values())
                    for k in ("ciphertext_up", "ciphertext_down", "model_up", "model_down")
                },
                "global": glob,
                "seconds": time.perf_counter() - t_round,
            }
            phases = {
                "train_round": train_s,
                "aggregate": aggregate_s,
                "evaluate_round": evaluate_s,
                "holdout": holdout_s,
            }
            self.results.append_round(line, phases)
            self.results.checkpoint(rnd, arrays, strategy, self.node_site, self.pending_share)
            self.progress({"event": "round", "line": line})
        summary = self.results.finish()
        self.progress({"event": "done", "summary": summary})
        return summary

    # -- messaging ----------------------------------------------------------------
    def _send_and_receive(self, messages: list[Message], rnd: int, phase: str) -> list[Message]:
        """push/pull with progress per reply (Grid.send_and_receive waits for all)."""
        if not messages:
            return []
        ids = set(self.grid.push_messages(messages))
        replies: list[Message] = []
        deadline = time.time() + 3600
        while ids and time.time() < deadline:
            got = list(self.grid.pull_messages(ids))
            for msg in got:
                ids.discard(msg.metadata.reply_to_message_id)
                replies.append(msg)
                self.progress(
                    {
                        "event": "reply",
                        "round": rnd,
                        "phase": phase,
                        "done": len(replies),
                        "of": len(messages),
                    }
                )
            if ids and not got:
                time.sleep(POLL_S)
        return replies

    def _site_of(self, node_id: int) -> int | str:
        return self.node_site.get(node_id, f"node-{node_id}")

    def _attach_peers(self, msg: Message, sites: dict) -> Message:
        """Consortium: give each site its peers' ciphertext of the last round."""
        node = msg.metadata.dst_node_id
        site = self._site_of(node)
        peers = {j: blobs for j, blobs in self.pending_share.items() if j != site}
        if self.study.exchange == "consortium" and peers:
            record = ConfigRecord()
            for j, (images_ct, labels_ct) in sorted(peers.items()):
                record[f"site-{j}-images"] = images_ct
                record[f"site-{j}-labels"] = labels_ct
            # strategies share one RecordDict among all messages: copy before adding
            content = RecordDict({**dict(msg.content.items()), "peers": record})
            msg = Message(content=content, message_type=msg.metadata.message_type, dst_node_id=node)
        entry = sites.setdefault(site, SiteRound(site=_site_name(site)))
        entry.bytes["model_down"] += array_bytes(msg.content["arrays"])
        entry.bytes["message_down"] += message_bytes(msg)
        if "peers" in msg.content:
            entry.bytes["ciphertext_down"] += sum(len(b) for b in msg.content["peers"].values())
        return msg

    def _account_train_replies(
        self, rnd: int, replies: Iterable[Message], sites: dict
    ) -> list[Message]:
        good: list[tuple[int, Message]] = []
        shares: dict[int, tuple[bytes, bytes]] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                site = self._site_of(node)
                entry = sites.setdefault(site, SiteRound(site=_site_name(site)))
                entry.ok, entry.error = (
                    False,
                    f"flower error {reply.error.code}: {reply.error.reason}",
                )
                continue
            content = reply.content
            status = content["status"]
            site = int(status["site"])
            self._remap(node, site, sites)
            entry = sites.setdefault(site, SiteRound(site=_site_name(site)))
            entry.bytes["message_up"] += message_bytes(reply)
            if status.get("error"):
                entry.ok, entry.error = False, str(status["error"])
                continue
            metrics = content["metrics"]
            entry.bytes["model_up"] += array_bytes(content["arrays"])
            entry.examples = int(metrics["num-examples"])
            entry.seconds = {
                "encrypt": float(metrics["encrypt-s"]),
                "train": float(metrics["train-s"]),
                "decrypt": float(metrics["decrypt-s"]),
            }
            entry.metrics = {"train_loss": float(metrics["train-loss"])}
            if "shared" in content:
                images_ct, labels_ct = content["shared"]["images"], content["shared"]["labels"]
                entry.bytes["ciphertext_up"] += len(images_ct) + len(labels_ct)
                entry.recon = {
                    "mse": float(metrics["recon-mse"]),
                    "psnr": float(metrics["recon-psnr"]),
                    "ssim": float(metrics["recon-ssim"]),
                }
                entry.metrics["shared"] = float(metrics["shared-images"])
                self.archive.put(images_ct, site=entry.site, server_round=rnd, kind="images")
                self.archive.put(labels_ct, site=entry.site, server_round=rnd, kind="labels")
                shares[site] = (images_ct, labels_ct)
                del content["shared"]  # strategies see only the model and metrics
            del content["status"]
            good.append((site, reply))
        if self.study.exchange == "consortium":
            self.pending_share = shares
        good.sort(key=lambda item: item[0])  # fixed order: reproducible float sums
        return [m for _, m in good]

    def _account_eval_replies(
        self, sent: list[Message], replies: Iterable[Message], sites: dict
    ) -> dict:
        for msg in sent:
            site = self._site_of(msg.metadata.dst_node_id)
            entry = sites.setdefault(site, SiteRound(site=_site_name(site)))
            entry.bytes["model_down"] += array_bytes(msg.content["arrays"])
            entry.bytes["message_down"] += message_bytes(msg)
        rows = []
        for reply in replies:
            site = self._site_of(reply.metadata.src_node_id)
            entry = sites.setdefault(site, SiteRound(site=_site_name(site)))
            if reply.has_error():
                continue
            entry.bytes["message_up"] += message_bytes(reply)
            if "metrics" in reply.content:
                rows.append(dict(reply.content["metrics"]))
        return _weighted_mean(rows)

    def _remap(self, node: int, site: int, sites: dict) -> None:
        if self.node_site.get(node) == site:
            return
        self.node_site[node] = site
        early = sites.pop(f"node-{node}", None)  # bytes counted before we knew the site
        if early is not None:
            entry = sites.setdefault(site, SiteRound(site=_site_name(site)))
            for k, v in early.bytes.items():
                entry.bytes[k] += v

    # -- metrics --------------------------------------------------------------------
    def evaluate_holdout(self, arrays: ArrayRecord) -> dict[str, float]:
        """Task metrics of the global model on the server-side held-out set."""
        if self._holdout is None:
            from client.data import load_holdout
            from client.site import study_data_root

            s = self.study
            root = study_data_root(s)
            self._holdout = load_holdout(
                root,
                s.modality,
                image_size=s.image_size,
                max_images=s.holdout_images,
                seed=s.seed,
                cache_dir=self.out / "server-cache",
                max_slices_per_subject=s.max_slices_per_subject,
            )
        model = build_model(self.study.modality)
        model.load_state_dict(arrays.to_torch_state_dict())
        h = self._holdout
        return evaluate(model, self.study.modality, h.images, h.targets, h.bits)

    @staticmethod
    def _recon_summary(sites: dict) -> dict[str, float]:
        ok = [s for s in sites.values() if s.ok and s.metrics.get("shared")]
        if not ok:
            return {}
        w = np.array([s.metrics["shared"] for s in ok])
        out = {}
        for k in ("mse", "psnr", "ssim"):
            vals = np.array([s.recon[k] for s in ok])
            out[f"recon_{k}_mean"] = (
                float(np.sum(w * vals) / np.sum(w))
                if np.all(np.isfinite(vals))
                else float(np.mean(vals))
            )
            worst = np.max(vals) if k == "mse" else np.min(vals)
            out[f"recon_{k}_worst"] = float(worst)
        return out

    @staticmethod
    def _train_summary(sites: dict) -> dict[str, float]:
        ok = [s for s in sites.values() if s.ok and "train_loss" in s.metrics]
        if not ok:
            return {}
        w = np.array([s.examples for s in ok], dtype=float)
        return {
            "train_loss": float(np.sum(w * [s.metrics["train_loss"] for s in ok]) / w.sum()),
            "sites_ok": len(ok),
        }


def _weighted_mean(rows: list[dict]) -> dict[str, float]:
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


def _site_name(site: int | str) -> str:
    return f"site-{site}" if isinstance(site, int) else site


def _site_order(name: str) -> tuple[int, str]:
    tail = name.rsplit("-", 1)[-1]
    return (int(tail), name) if tail.isdigit() and name.startswith("site-") else (10**9, name)


def site_records(content: RecordDict) -> tuple[MetricRecord | None, ConfigRecord | None]:
    return content.get("metrics"), content.get("shared")
