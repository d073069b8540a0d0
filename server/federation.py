"""A study on a Flower Grid: enrol the sites, then Flower's own round loop.

`run_study` is what the ServerApp's main does. It prepares what Flower's
`Strategy.start` cannot know (the run folder, the sites' enrolment, a
resumed checkpoint), runs `MedfedStrategy.start(...)`, and writes the
study's ending (summary.json, report.md, a progress event). The round loop,
sampling and aggregation are Flower's.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from server.archive import Archive, ArchiveError
from server.checkpoint import restore_strategy
from server.enrolment import SiteDirectory
from server.grants import GrantBroker
from server.grid import ReportingGrid
from server.holdout import HoldoutSource, study_data_report, study_holdout
from server.ledger import RoundLedger, StudyStopped
from server.progress import Events
from server.results import ResultWriter, privacy_spent
from server.secagg import strategy_class  # secure-aggregation = secagg+: SecAgg+ rounds
from server.strategy import build_strategy
from study.config import Study
from study.privacy import check_privacy
from study.schema import RoundRecord, Summary, write_json
from study.secure_aggregation import check_secure_aggregation
from study.sites import SiteId
from study.task import build_model, evaluate


@dataclass
class StudyOutcome:
    """What a study ended with, in memory (the same is on disk)."""

    summary: Summary
    rounds: list[RoundRecord]
    arrays: dict[str, np.ndarray]  # the final global model


def pending_shares(
    archive: Archive, digests: dict[int, tuple[str, str]], last_round: int
) -> tuple[dict[int, tuple[bytes, bytes]], list[str]]:
    """The shares of the checkpointed round that a resumed consortium sends on,
    each read from the archive verified (a regular file whose sha256 is its
    name); a share whose object is missing, a link or altered is not sent,
    and the reason is returned."""
    pending, skipped = {}, []
    for site, (images, labels) in sorted(digests.items()):
        try:
            pending[site] = (archive.get(images), archive.get(labels))
        except (ArchiveError, FileNotFoundError) as exc:
            skipped.append(
                f"{SiteId.site(site)}'s share of round {last_round} is not sent to its peers: {exc}"
            )
    return pending, skipped


def run_study(
    grid: Grid, study: Study, *, events: Events, holdout: HoldoutSource = study_holdout
) -> StudyOutcome:
    check_secure_aggregation(study)  # refused combinations stop before any file is written
    check_privacy(study)
    out = Path(study.out_dir).absolute()
    results = ResultWriter(out, study)
    archive = Archive(out / "archive")
    torch.manual_seed(study.seed)
    arrays = ArrayRecord(build_model(study.modality).state_dict())
    template = {k: a.numpy() for k, a in arrays.items()}
    ckpt = results.resume(template, archive) if study.resume else None
    if ckpt is not None and ckpt.warning:  # taken on --trust-checkpoint
        events.emit("warning", message=ckpt.warning)
    if not study.resume:
        results.start()
    write_json(out / "data-report.json", study_data_report(study))
    reporting = ReportingGrid(grid, events)
    directory = SiteDirectory(study)
    directory.enrol_all(reporting)
    reporting.admit = lambda node: node in directory.node_site

    inner = build_strategy(study)
    done, pending, warnings = 0, {}, []
    if ckpt is not None:
        done = ckpt.round
        arrays = ArrayRecord({k: torch.from_numpy(v) for k, v in ckpt.model.items()})
        restore_strategy(inner, ckpt.strategy, ckpt.strategy_arrays)
        pending, warnings = pending_shares(archive, ckpt.pending_share, done)
    grants = GrantBroker.for_study(study, archive)
    warnings += grants.warnings + grants.policy_warnings(done + 1)
    held: list = []
    rounds: list[RoundRecord] = []

    def end_round(state: RoundLedger, new_arrays: ArrayRecord) -> None:
        if not all(np.isfinite(a.numpy()).all() for a in new_arrays.values()):
            reason = (
                f"training diverged in round {state.round}: the global model has NaN or "
                "infinite weights (lower learning-rate)"
            )
            raise StudyStopped(reason, round=state.round, reason=reason, failed=[])
        if not held:
            held.append(holdout(study, out / "server-cache"))
        h = held[0]
        t0 = time.perf_counter()
        model = build_model(study.modality)
        model.load_state_dict(new_arrays.to_torch_state_dict())
        metrics = evaluate(model, study.modality, h.images, h.targets, h.bits)
        holdout_s = time.perf_counter() - t0
        record = strategy.round_record(metrics)
        if study.dp != "none":
            record.extra["privacy"] = privacy_spent(study, record)
        if warnings and not rounds:  # what the start warned of, in the first round's record
            record.extra["warnings"] = list(warnings)
        phases = {
            "train_round": reporting.phase_seconds.get((state.round, "train"), 0.0),
            "aggregate": state.aggregate_s,
            "evaluate_round": reporting.phase_seconds.get((state.round, "evaluate"), 0.0),
            "holdout": holdout_s,
        }
        state.write(results, record, phases)
        digests = {
            s: tuple(hashlib.sha256(b).hexdigest() for b in blobs)
            for s, blobs in strategy.pending_share.items()
        }
        results.checkpoints.save(state.round, new_arrays, inner, digests)
        rounds.append(record)
        events.emit("round", line=record.to_json())

    strategy = strategy_class(study)(  # MedfedStrategy, or SecAggPlusStrategy (server/secagg.py)
        inner,
        study,
        directory=directory,
        archive=archive,
        grants=grants,
        end_round=end_round,
        round_offset=done,
        pending_share=pending,
        events=events,
    )
    reporting.account = strategy  # every message of a round is accounted and checked there
    events.emit("start", rounds=study.num_rounds, sites=study.num_sites, from_round=done + 1)
    for message in warnings:
        events.emit("warning", message=message)
    try:
        result = strategy.start(
            grid=reporting,
            initial_arrays=arrays,
            num_rounds=study.num_rounds - done,
            timeout=study.round_timeout,
            train_config=ConfigRecord(),
            evaluate_config=ConfigRecord(),
            evaluate_fn=strategy.end_round,
        )
    except StudyStopped as stop:
        summary = results.stopped(stop.round, stop.reason, stop.failed)
        events.emit("stopped", round=stop.round, reason=stop.reason)
        raise
    summary = results.finish()
    events.emit("done", summary=summary.to_json())
    final = result.arrays if len(result.arrays) else arrays
    return StudyOutcome(summary, rounds, {k: a.numpy() for k, a in final.items()})
