"""A study's run folder, as the server writes it (schema: study.schema).

rounds.jsonl gets one line per completed round, flushed as soon as the round
ends, so a killed study keeps every round it finished; `--resume` restarts
after the last round that has a verified checkpoint. Nothing already written
is removed or rewritten until what replaces it is known good: a resume
reads and checks every file first, and a fresh run into a folder that holds
an earlier run moves that run's files to `previous/<time>/` instead of
deleting or mixing them.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from server.archive import Archive
from server.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from server.report import write_report
from study.config import UPPER_BOUNDS, Study
from study.dp import dp_mode
from study.privacy import epsilon_spent
from study.schema import (
    BYTE_KINDS,
    SCHEMA,
    PhaseRecord,
    PrivacyRecord,
    RoundRecord,
    SchemaError,
    Summary,
    append_jsonl,
    iter_jsonl,
    iter_phases,
    read_rounds,
    write_json,
)

# the server's files in a run folder (a site's state lives in sites/, not here)
SERVER_ENTRIES = (
    "config.json",
    "rounds.jsonl",
    "phases.jsonl",
    "summary.json",
    "events.jsonl",
    "data-report.json",
    "report.md",
    "bandwidth.png",
    "task.png",
    "recon_psnr.png",
    "archive",
    "checkpoints",
    "server",
    "server-cache",
)


class ResultWriter:
    def __init__(self, out: Path, study: Study) -> None:
        self.out, self.study = out, study
        self.rounds_path = out / "rounds.jsonl"
        self.phases_path = out / "phases.jsonl"
        self.checkpoints = CheckpointStore(out, study)
        self.t_start = time.perf_counter()

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        """A fresh run: an earlier run's files are set aside, never mixed in."""
        self.out.mkdir(parents=True, exist_ok=True)
        earlier = [name for name in SERVER_ENTRIES if (self.out / name).exists()]
        if earlier:
            stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            aside = self.out / "previous" / stamp
            aside.mkdir(parents=True)
            for name in earlier:
                shutil.move(str(self.out / name), str(aside / name))
        self.write_config()

    def resume(self, model_template: dict[str, np.ndarray], archive: Archive) -> Checkpoint | None:
        """The last round with a verified checkpoint, after checking every file
        it depends on; only then are later rounds dropped from the files."""
        rounds = read_resumed_rounds(self.rounds_path)  # SchemaError names file, line, field
        phases = read_resumed_phases(self.phases_path)
        index = archive.index()  # SchemaError names a damaged line
        done = {r.round for r in rounds}
        ckpt = None
        for rnd in reversed(self.checkpoints.rounds()):
            if rnd in done:
                # CheckpointError says why; --trust-checkpoint accepts another key's
                ckpt = self.checkpoints.load(rnd, model_template, trust=self.study.trust_checkpoint)
                break
        if ckpt is None:
            if rounds:
                raise CheckpointError(
                    f"{self.out}: {len(rounds)} round(s) recorded but no checkpoint of any of "
                    "them; start a new --out folder"
                )
            self.start()
            return None
        last = ckpt.round
        self._rewrite(self.rounds_path, [r.to_json() for r in rounds if r.round <= last])
        self._rewrite(self.phases_path, [p.to_json() for p in phases if p.round <= last])
        archive.keep_rounds(last, index)
        (self.out / "summary.json").unlink(missing_ok=True)  # rewritten when the study ends
        self.write_config()
        return ckpt

    @staticmethod
    def _rewrite(path: Path, docs: list[dict]) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        for doc in docs:
            append_jsonl(tmp, doc)
        tmp.touch()
        os.replace(tmp, path)

    def write_config(self) -> None:
        import flwr
        import torch

        doc = {
            "schema": SCHEMA,
            "study": self.study.to_run_config(),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "flwr": flwr.__version__,
                "numpy": np.__version__,
            },
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        }
        write_json(self.out / "config.json", doc)

    def append_round(self, record: RoundRecord, phases: PhaseRecord | dict[str, float]) -> None:
        """The round's lines of rounds.jsonl and phases.jsonl (`phases`: a
        PhaseRecord, or the seconds per phase, study.schema.PHASES)."""
        if not isinstance(phases, PhaseRecord):
            phases = PhaseRecord(record.round, dict(phases))
        append_jsonl(self.rounds_path, record.to_json())
        append_jsonl(self.phases_path, phases.to_json())

    # -- endings ----------------------------------------------------------------
    def stopped(self, rnd: int, reason: str, failed: list[dict]) -> Summary:
        summary = self.summary()
        summary.status, summary.stopped_round = "stopped", rnd
        summary.reason, summary.failed_sites = reason, failed
        write_json(self.out / "summary.json", summary.to_json())
        write_report(self.out)
        return summary

    def finish(self) -> Summary:
        summary = self.summary()
        write_json(self.out / "summary.json", summary.to_json())
        write_report(self.out)
        return summary

    def summary(self) -> Summary:
        rounds = read_rounds(self.out)
        totals = {k: sum(s.bytes[k] for r in rounds for s in r.sites) for k in BYTE_KINDS}
        per_site: dict[str, dict] = {}
        for r in rounds:
            for s in r.sites:
                entry = per_site.setdefault(
                    s.site,
                    {
                        **dict.fromkeys(BYTE_KINDS, 0),
                        "rounds_ok": 0,
                        "rounds_not_sampled": 0,
                        "rounds_failed": 0,
                    },
                )
                for k in BYTE_KINDS:
                    entry[k] += s.bytes[k]
                # ok: trained; not sampled (fraction-train) is neither ok nor failed
                kind = "rounds_failed" if not s.ok else "rounds_ok" if s.sampled else None
                entry[kind or "rounds_not_sampled"] += 1
        speeds = self.study.link_speeds_mbps
        n = len(rounds)
        last_privacy = rounds[-1].privacy if rounds else None
        summary = Summary(
            status="complete" if n == self.study.num_rounds else "incomplete",
            study=self.study.name,
            method=self.study.method,
            exchange=self.study.exchange,
            modality=self.study.modality,
            sites=self.study.num_sites,
            rounds=n,
            bytes=totals,
            bytes_per_round={k: (v / n if n else 0.0) for k, v in totals.items()},
            bytes_per_site=per_site,
            # the busiest round, all sites uploading over their own link in parallel:
            # the slowest site's upload bounds the round
            upload_seconds_per_round={f"{m:g}mbps": _slowest_upload_s(rounds, m) for m in speeds},
            final=dict(rounds[-1].global_) if rounds else {},
            seconds=sum(r.seconds for r in rounds),
        )
        if last_privacy is not None:
            summary.privacy = last_privacy
        return summary


# -- files read back on resume, validated as hostile -------------------------------
_MAX_LINE_SITES = 1024 + 1  # num-sites' upper bound, and the auditor
_NAME_LEN = 256


def _check_round_line(doc: object, where: str) -> None:
    """A rounds.jsonl line by field type and bound (SchemaError names the field)."""

    def bad(name: str, why: str) -> SchemaError:
        return SchemaError(f"{where}: field {name!r}: {why}")

    if not isinstance(doc, dict):
        raise SchemaError(f"{where}: not a round record (a JSON object)")
    for name in ("round", "sites", "totals", "global", "seconds"):
        if name not in doc:
            raise bad(name, "missing")
    if type(doc["round"]) is not int or not 1 <= doc["round"] <= UPPER_BOUNDS["num-rounds"]:
        raise bad("round", f"{doc['round']!r} is not a round number")
    if not _is_seconds(doc["seconds"]):
        raise bad("seconds", f"{doc['seconds']!r} is not a number of seconds")
    _check_counts(doc["totals"], bad, "totals")
    _check_metrics(doc["global"], bad, "global")
    sites = doc["sites"]
    if not isinstance(sites, list) or len(sites) > _MAX_LINE_SITES:
        raise bad("sites", "not a list of site records")
    for i, site in enumerate(sites):
        name = f"sites[{i}]"
        if not isinstance(site, dict):
            raise bad(name, "not a site record")
        if not isinstance(site.get("site"), str) or not 0 < len(site["site"]) <= _NAME_LEN:
            raise bad(f"{name}.site", "not a site name")
        if not isinstance(site.get("ok"), bool):
            raise bad(f"{name}.ok", "not true or false")
        if not isinstance(site.get("sampled", True), bool):
            raise bad(f"{name}.sampled", "not true or false")
        if not (site.get("error") is None or isinstance(site["error"], str)):
            raise bad(f"{name}.error", "not text or null")
        if type(site.get("examples")) is not int or site["examples"] < 0:
            raise bad(f"{name}.examples", "not a count")
        _check_counts(site.get("bytes"), bad, f"{name}.bytes")
        _check_metrics(site.get("recon"), bad, f"{name}.recon")
        seconds = site.get("seconds")
        if not isinstance(seconds, dict) or not all(_is_seconds(v) for v in seconds.values()):
            raise bad(f"{name}.seconds", "not a mapping of seconds")
        peers = site.get("peers", {})
        if not isinstance(peers, dict):
            raise bad(f"{name}.peers", "not a mapping of peers")
        for peer, values in peers.items():
            _check_metrics(values, bad, f"{name}.peers.{peer}")


def _is_seconds(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1e12


def _check_counts(doc: object, bad, name: str) -> None:
    if not isinstance(doc, dict) or not all(
        type(v) is int and 0 <= v < 2**63 for v in doc.values()
    ):
        raise bad(name, "not a mapping of byte counts")


def _check_metrics(doc: object, bad, name: str) -> None:
    """Metrics: numbers, null (undefined) and true/false ("exact")."""
    if not isinstance(doc, dict) or not all(
        v is None or isinstance(v, int | float) for v in doc.values()
    ):
        raise bad(name, "not a mapping of metrics (numbers or null)")


def read_resumed_rounds(path: Path) -> list[RoundRecord]:
    """rounds.jsonl as a resume reads it back: every line checked by field type and
    bound, rounds strictly increasing; SchemaError names the file, line and field."""
    if not path.exists():
        return []
    out: list[RoundRecord] = []
    for number, doc in iter_jsonl(path):
        where = f"{path}, line {number}"
        _check_round_line(doc, where)
        if out and doc["round"] <= out[-1].round:
            raise SchemaError(f"{where}: field 'round': {doc['round']} follows {out[-1].round}")
        try:
            out.append(RoundRecord.from_json(doc))
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"{where}: not a round record ({exc})") from None
    return out


def read_resumed_phases(path: Path) -> list[PhaseRecord]:
    """phases.jsonl as a resume reads it back: a round number and seconds per
    phase (PhaseRecord.from_json checks each line; SchemaError names the file,
    line and field)."""
    if not path.exists():
        return []
    return list(iter_phases(path))


def _slowest_upload_s(rounds: list[RoundRecord], mbps: float) -> float:
    if not rounds:
        return 0.0
    worst = max(max((s.bytes["message_up"] for s in r.sites), default=0) for r in rounds)
    return worst * 8 / (mbps * 1e6)


def privacy_spent(study: Study, record: RoundRecord) -> PrivacyRecord:
    """The (epsilon, delta) spent after this round (study/privacy.py).

    Central modes: the strategy put the round's aggregation (an
    AggregationRecord: `aggregation_weights` and `effective_noise_multiplier`)
    in `record.privacy`; epsilon composes that multiplier with the ones the
    earlier rounds recorded in rounds.jsonl (a round before these fields:
    the study's multiplier). For local-dpsgd (sample-level: the mode's
    `level`, study.dp) each site has its own guarantee (its number of images
    sets the sampling rate); the worst site's is reported, with every site's."""
    aggregation = record.privacy
    z = study.dp_noise_multiplier
    if dp_mode(study.dp).level != "sample":
        effective = getattr(aggregation, "effective_noise_multiplier", None)
        if effective is None:
            return _privacy_record(epsilon_spent(study, record.round))
        earlier = {
            r.round: getattr(r.privacy, "effective_noise_multiplier", None)
            for r in read_rounds(Path(study.out_dir))
            if r.round < record.round
        }
        history = [_or(earlier.get(n), z) for n in range(1, record.round)]
        history.append(effective)
        spent = epsilon_spent(study, record.round, noise_multipliers=history)
        return _privacy_record(
            spent,
            aggregation_weights=aggregation.aggregation_weights,
            effective_noise_multiplier=effective,
        )
    # the noise is in each site's DP-SGD steps: the server's weighting does not change it
    # a site fraction-train left out of this round keeps the count it last trained on
    examples = {
        s.site: s.examples
        for r in [*read_rounds(Path(study.out_dir)), record]
        if r.round <= record.round
        for s in r.sites
        if s.examples > 0
    }
    per_site = {
        site: epsilon_spent(study, record.round, num_examples=n) for site, n in examples.items()
    }
    worst = max(per_site.values(), key=lambda p: p.epsilon)
    return _privacy_record(
        worst,
        aggregation_weights="examples",
        effective_noise_multiplier=z,
        sites={k: v.epsilon for k, v in per_site.items()},
    )


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _privacy_record(spent, **changes) -> PrivacyRecord:
    """study.privacy.PrivacySpent as the results record, with `changes`."""
    return PrivacyRecord(**{**vars(spent), **changes})
