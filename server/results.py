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
from study.config import Study
from study.privacy import epsilon_spent
from study.schema import (
    BYTE_KINDS,
    SCHEMA,
    RoundRecord,
    Summary,
    append_jsonl,
    iter_jsonl,
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
        rounds = read_rounds(self.out)  # SchemaError names a damaged line
        phases = (
            [doc for _, doc in iter_jsonl(self.phases_path)] if self.phases_path.exists() else []
        )
        index = archive.index()  # SchemaError names a damaged line
        done = {r.round for r in rounds}
        ckpt = None
        for rnd in reversed(self.checkpoints.rounds()):
            if rnd in done:
                ckpt = self.checkpoints.load(rnd, model_template)  # CheckpointError says why
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
        self._rewrite(self.phases_path, [p for p in phases if p["round"] <= last])
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

    def append_round(self, record: RoundRecord, phases: dict[str, float]) -> None:
        append_jsonl(self.rounds_path, record.to_json())
        append_jsonl(self.phases_path, {"round": record.round, **phases})

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
                    s.site, {**dict.fromkeys(BYTE_KINDS, 0), "rounds_ok": 0, "rounds_failed": 0}
                )
                for k in BYTE_KINDS:
                    entry[k] += s.bytes[k]
                entry["rounds_ok" if s.ok else "rounds_failed"] += 1
        speeds = self.study.link_speeds_mbps
        n = len(rounds)
        extra = (
            {"privacy": rounds[-1].extra["privacy"]}
            if rounds and "privacy" in rounds[-1].extra
            else {}
        )
        return Summary(
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
            extra=extra,
        )


def _slowest_upload_s(rounds: list[RoundRecord], mbps: float) -> float:
    if not rounds:
        return 0.0
    worst = max(max((s.bytes["message_up"] for s in r.sites), default=0) for r in rounds)
    return worst * 8 / (mbps * 1e6)


def privacy_spent(study: Study, record: RoundRecord) -> dict:
    """The (epsilon, delta) spent after this round (study/privacy.py). For
    local-dpsgd each site has its own guarantee (its number of images sets
    the sampling rate); the worst site's is reported, with every site's."""
    if study.dp != "local-dpsgd":
        return epsilon_spent(study, record.round).to_json()
    per_site = {
        s.site: epsilon_spent(study, record.round, num_examples=s.examples)
        for s in record.sites
        if s.examples > 0
    }
    worst = max(per_site.values(), key=lambda p: p.epsilon)
    return {**worst.to_json(), "sites": {k: v.epsilon for k, v in per_site.items()}}
