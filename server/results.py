"""A study's files: config.json, rounds.jsonl, summary.json, checkpoints.

rounds.jsonl gets one line per completed round, flushed as soon as the round
ends, so a killed study keeps every round it finished; `--resume` restarts
after the last line that has a checkpoint.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import time
from pathlib import Path

import numpy as np
import torch

from study.config import Study
from server.report import write_report

# What rounds.jsonl counts per site and round, in bytes.
BYTE_KINDS = (
    "ciphertext_up",
    "ciphertext_down",
    "model_up",
    "model_down",
    "message_up",
    "message_down",
)

SCHEMA = 1


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dump_json(path: Path, doc) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


class ResultWriter:
    def __init__(self, out: Path, study: Study) -> None:
        self.out, self.study = out, study
        self.rounds_path = out / "rounds.jsonl"
        self.phases_path = out / "phases.jsonl"
        self.ckpt_dir = out / "checkpoints"
        self.t_start = time.perf_counter()

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in (self.rounds_path, self.phases_path, self.out / "summary.json"):
            stale.unlink(missing_ok=True)
        if self.ckpt_dir.exists():
            for f in self.ckpt_dir.glob("round-*.pt"):
                f.unlink()
        self.write_config()

    def write_config(self) -> None:
        import flwr

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
        dump_json(self.out / "config.json", doc)

    def append_round(self, line: dict, phases: dict[str, float]) -> None:
        with self.rounds_path.open("a") as fh:
            fh.write(json.dumps(line, default=_json_default) + "\n")
        with self.phases_path.open("a") as fh:
            fh.write(json.dumps({"round": line["round"], **phases}) + "\n")

    def rounds(self) -> list[dict]:
        if not self.rounds_path.exists():
            return []
        return [json.loads(x) for x in self.rounds_path.read_text().splitlines() if x.strip()]

    # -- checkpoints ------------------------------------------------------------
    def checkpoint(self, rnd: int, arrays, strategy, node_site: dict, pending_share: dict) -> None:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        try:
            strategy_state = pickle.dumps(strategy)
        except Exception:  # noqa: BLE001 - a strategy that cannot be pickled restarts fresh
            strategy_state = None
        doc = {
            "round": rnd,
            "arrays": {k: v.numpy() for k, v in arrays.items()},
            "strategy": strategy_state,
            "node_site": node_site,
            "pending_share": pending_share,
        }
        tmp = self.ckpt_dir / f"round-{rnd}.pt.tmp"
        torch.save(doc, tmp)
        os.replace(tmp, self.ckpt_dir / f"round-{rnd}.pt")

    def last_checkpoint(self) -> dict | None:
        done = {line["round"] for line in self.rounds()}
        ckpts = (
            sorted(self.ckpt_dir.glob("round-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
            if self.ckpt_dir.exists()
            else []
        )
        for path in reversed(ckpts):
            rnd = int(path.stem.split("-")[1])
            if rnd in done:
                return torch.load(path, map_location="cpu", weights_only=False)
        return None

    def truncate(self, last_round: int) -> None:
        """Keep rounds <= last_round (a resumed study redoes the rest)."""
        for path in (self.rounds_path, self.phases_path):
            if path.exists():
                keep = [
                    x
                    for x in path.read_text().splitlines()
                    if x.strip() and json.loads(x)["round"] <= last_round
                ]
                path.write_text("".join(x + "\n" for x in keep))
        (self.out / "summary.json").unlink(missing_ok=True)

    # -- endings ----------------------------------------------------------------
    def stopped(self, rnd: int, reason: str, failed: list[dict]) -> None:
        summary = self.summary()
        summary.update(
            {"status": "stopped", "stopped_round": rnd, "reason": reason, "failed_sites": failed}
        )
        dump_json(self.out / "summary.json", summary)
        write_report(self.out)

    def finish(self) -> dict:
        summary = self.summary()
        dump_json(self.out / "summary.json", summary)
        write_report(self.out)
        return summary

    def summary(self) -> dict:
        rounds = self.rounds()
        totals = {k: sum(s["bytes"][k] for r in rounds for s in r["sites"]) for k in BYTE_KINDS}
        per_site: dict[str, dict] = {}
        for r in rounds:
            for s in r["sites"]:
                entry = per_site.setdefault(
                    s["site"], {**dict.fromkeys(BYTE_KINDS, 0), "rounds_ok": 0, "rounds_failed": 0}
                )
                for k in BYTE_KINDS:
                    entry[k] += s["bytes"][k]
                entry["rounds_ok" if s["ok"] else "rounds_failed"] += 1
        speeds = self.study.link_speeds_mbps
        final = rounds[-1]["global"] if rounds else {}
        return {
            "schema": SCHEMA,
            "status": "complete" if len(rounds) == self.study.num_rounds else "incomplete",
            "study": self.study.name,
            "method": self.study.method,
            "exchange": self.study.exchange,
            "modality": self.study.modality,
            "sites": self.study.num_sites,
            "rounds": len(rounds),
            "bytes": totals,
            "bytes_per_round": {k: (v / len(rounds) if rounds else 0.0) for k, v in totals.items()},
            "bytes_per_site": per_site,
            # the busiest round, all sites uploading over their own link in parallel:
            # the slowest site's upload bounds the round
            "upload_seconds_per_round": {
                f"{m:g}mbps": _slowest_upload_s(rounds, m) for m in speeds
            },
            "final": final,
            "seconds": sum(r["seconds"] for r in rounds),
        }


def _slowest_upload_s(rounds: list[dict], mbps: float) -> float:
    if not rounds:
        return 0.0
    worst = max(max((s["bytes"]["message_up"] for s in r["sites"]), default=0) for r in rounds)
    return worst * 8 / (mbps * 1e6)
