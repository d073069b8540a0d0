"""SecAgg+ against plain FedAvg: bytes and seconds per round for 4 and 16 sites.

For each number of sites the same study (exchange = none, FedAvg, the same
seed, so the same initial model and the same local training) runs twice on
Flower's simulation engine, side by side: with `secure-aggregation = none`
and with `secagg+`. Bytes come from rounds.jsonl (serialized message content
per site and direction, every SecAgg+ stage included), seconds from the
rounds' wall time and phases.jsonl's training phase; both as medians over
rounds 2.. (round 1 holds Ray's start-up and, under SecAgg+, the one-off
`query.examples`, reported apart) and as SecAgg+ / plain ratios. Per stage:
each site's bytes and the stage's seconds.

Accuracy: the round-1 global models of both runs against a float64 FedAvg
of the sites' round-1 models, recomputed here with the same code and seeds
(one torch thread, as a simulated site has), and against
`quantisation_error_bound` for those sites.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Progress, quiet, summarize
from benchmarks.document import Docs, documents
from benchmarks.result_types import SecAggResults
from benchmarks.tables import fmt, reproduce_line, shows_results, spread, table

MODES = ("none", "secagg+")
STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")


def run_secagg_overhead(
    *,
    sites: tuple[int, ...] = (4, 16),
    num_rounds: int = 4,
    patients_per_site: int = 20,
    image_size: int = 32,
    progress: Progress = quiet,
) -> dict[str, Any]:
    """Plain FedAvg and SecAgg+ studies side by side for each number of sites."""
    from benchmarks.federation import benchmark_study, run_study
    from study.schema import iter_phases

    if num_rounds < 2:
        raise ValueError(
            f"secagg needs at least 2 rounds (round 1 holds start-up), got {num_rounds}"
        )
    points = []
    with tempfile.TemporaryDirectory(prefix="medfed-bench-") as tmp:
        for n in sites:
            settings = dict(
                num_sites=n,
                min_sites=n,
                num_rounds=num_rounds,
                phantom_patients=patients_per_site * n,
                image_size=image_size,
                exchange="none",
                holdout_images=64,
            )
            runs, studies = {}, {}
            for mode in MODES:
                progress(f"secagg: {n} sites, secure-aggregation = {mode}")
                out = Path(tmp) / f"{mode}-{n}"
                studies[mode] = study = benchmark_study(out, secure_aggregation=mode, **settings)
                run = run_study(study)
                run["phases"] = [p.to_json() for p in iter_phases(out / "phases.jsonl")]
                run["round1_model"] = round_model(study, 1)
                runs[mode] = run
            progress(f"secagg: {n} sites, the sites' round-1 models recomputed for the reference")
            points.append(_point(n, runs, studies["secagg+"]))
    return {
        "settings": {
            "sites": list(sites),
            "num_rounds": num_rounds,
            "patients_per_site": patients_per_site,
            "image_size": image_size,
        },
        "points": points,
    }


def round_model(study, rnd: int) -> dict[str, np.ndarray]:
    """The global model of round `rnd`, read through the checkpoint loader (which
    checks the manifest's HMAC, the study hash and the arrays' digest)."""
    from server.checkpoint import CheckpointStore
    from study.task import build_model

    template = {k: v.numpy() for k, v in build_model(study.modality).state_dict().items()}
    return CheckpointStore(Path(study.out_dir), study).load(rnd, template).model


def _point(n: int, runs: dict[str, dict], study) -> dict[str, Any]:
    out: dict[str, Any] = {"sites": n, "failed": {m: runs[m]["sites_failed"] for m in MODES}}
    for mode in MODES:
        rounds, phases = runs[mode]["rounds"], runs[mode]["phases"]
        later = rounds[1:]
        out[mode] = {
            "round_s": summarize(r["seconds"] for r in later),
            "train_phase_s": summarize(p["train_round"] for p in phases[1:]),
            "round1_s": rounds[0]["seconds"],
            "bytes_per_round": {
                k: statistics.median(sum(s["bytes"][k] for s in r["sites"]) for r in later)
                for k in ("message_up", "message_down", "model_up", "model_down")
            },
        }
    for key in ("round_s", "train_phase_s"):
        out[f"{key}_ratio"] = out["secagg+"][key]["median"] / out["none"][key]["median"]
    plain, secure = out["none"]["bytes_per_round"], out["secagg+"]["bytes_per_round"]
    out["bytes_ratio"] = (secure["message_up"] + secure["message_down"]) / (
        plain["message_up"] + plain["message_down"]
    )
    out["stages"] = _stages(runs["secagg+"]["rounds"], n)
    out["accuracy"] = _accuracy(runs, study)
    return out


def _stages(rounds: list[dict], n: int) -> dict[str, Any]:
    """Per stage: bytes per site (mean over sites, median over rounds 2..) and seconds."""
    out = {}
    for stage in ("examples", *STAGES):
        rows = [
            r["secure_aggregation"]["stages"][stage]
            for r in rounds
            if stage in r["secure_aggregation"]["stages"]
        ]
        if stage != "examples":
            rows = rows[1:] or rows  # the steady state
        out[stage] = {
            "rounds": len(rows),
            "seconds": statistics.median(s["seconds"] for s in rows),
            "up_per_site": statistics.median(
                sum(v["up"] for v in s["sites"].values()) / n for s in rows
            ),
            "down_per_site": statistics.median(
                sum(v["down"] for v in s["sites"].values()) / n for s in rows
            ),
        }
    return out


def _accuracy(runs: dict[str, dict], study) -> dict[str, Any]:
    """Round 1: both global models against a float64 FedAvg of the recomputed site models."""
    import torch

    from client.site import Site
    from study.secure_aggregation import quantisation_error_bound
    from study.task import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(study.seed)
        start = build_model(study.modality).state_dict()
        models, examples = [], []
        for i in range(study.num_sites):
            update = Site(study, i, study.num_sites).train_round(
                {k: v.clone() for k, v in start.items()}, 1
            )
            models.append(
                {
                    k: v.detach().numpy().astype(np.float64)
                    for k, v in update.model.state_dict().items()
                }
            )
            examples.append(update.train.examples)
    finally:
        torch.set_num_threads(threads)
    fedavg = {
        k: sum(m[k] * e for m, e in zip(models, examples, strict=True)) / sum(examples)
        for k in models[0]
    }
    protocol = runs["secagg+"]["rounds"][0]["secure_aggregation"]
    largest = max(float(np.abs(m[k]).max()) for m in models for k in m)

    def gap(a: dict[str, np.ndarray]) -> float:
        return max(float(np.abs(a[k].astype(np.float64) - fedavg[k]).max()) for k in fedavg)

    return {
        "secagg_vs_fedavg64": gap(runs["secagg+"]["round1_model"]),
        "plain_vs_fedavg64": gap(runs["none"]["round1_model"]),
        "secagg_vs_plain": max(
            float(
                np.abs(
                    runs["secagg+"]["round1_model"][k].astype(np.float64)
                    - runs["none"]["round1_model"][k]
                ).max()
            )
            for k in fedavg
        ),
        "bound": quantisation_error_bound(
            examples,
            protocol["max_weight"],
            study.secagg_clipping_range,
            study.secagg_quantization_range,
            largest,
        ),
        "round1_update": max(float(np.abs(fedavg[k] - start[k].numpy()).max()) for k in fedavg),
        "examples": examples,
    }


# -- docs/BENCHMARKS.md -------------------------------------------------------------------------
def secagg_section(docs: Docs, add: Callable[[str], None]) -> None:
    """SecAgg+ overhead against plain FedAvg, per stage, and its aggregate's accuracy."""
    add("## Secure aggregation (SecAgg+) against plain FedAvg\n")
    doc = documents(docs).get("secagg")
    if not shows_results(doc, "secagg", add):
        return
    r: SecAggResults = doc.result
    st = r.settings
    add(
        f"The same study twice on Flower's simulation engine, side by side: plain FedAvg and "
        f"`secure-aggregation = secagg+` (Flower's SecAggPlusWorkflow and secaggplus_mod), "
        f"exchange none, {st['patients_per_site']} phantom patients per site, "
        f"{st['image_size']} px, {st['num_rounds']} rounds, every site sampled. Medians over "
        "rounds 2.. (min..max, n); bytes are serialized message content per round from "
        "rounds.jsonl (kB = 1000 bytes), every SecAgg+ stage included. Round 1 also holds "
        "Ray's start-up and, under SecAgg+, the one-off `query.examples` (below; its seconds "
        "include each site's first data load, which a plain round 1 spends in training). "
        "SecAgg+ sends the model down once (in the collect stage, as numpy .npy bytes) and a "
        "masked vector of int64 values up: twice a float32 model; the key stages grow with "
        "the square of the number of sites (every site is every other's neighbour).\n"
    )
    rows = []
    for p in r.points:
        plain, secure = p["none"], p["secagg+"]
        n = p["sites"]
        for label, key in (
            ("message up", "message_up"),
            ("message down", "message_down"),
            ("model up", "model_up"),
        ):
            a, b = plain["bytes_per_round"][key] / n / 1e3, secure["bytes_per_round"][key] / n / 1e3
            rows.append([str(n), f"{label} kB per site", fmt(a, 1), fmt(b, 1), fmt(b / a)])
        rows.append(
            [
                str(n),
                "all messages kB per round",
                fmt(
                    sum(plain["bytes_per_round"][k] for k in ("message_up", "message_down")) / 1e3,
                    1,
                ),
                fmt(
                    sum(secure["bytes_per_round"][k] for k in ("message_up", "message_down")) / 1e3,
                    1,
                ),
                fmt(p["bytes_ratio"]),
            ]
        )
        rows.append(
            [
                str(n),
                "round s",
                spread(plain["round_s"]),
                spread(secure["round_s"]),
                fmt(p["round_s_ratio"]),
            ]
        )
        rows.append(
            [
                str(n),
                "training phase s",
                spread(plain["train_phase_s"]),
                spread(secure["train_phase_s"]),
                fmt(p["train_phase_s_ratio"]),
            ]
        )
    add(table(["sites", "quantity", "plain FedAvg", "SecAgg+", "SecAgg+ / plain"], rows) + "\n")
    rows = []
    for p in r.points:
        for stage, s in p["stages"].items():
            rows.append(
                [
                    str(p["sites"]),
                    stage,
                    fmt(s["up_per_site"], 0),
                    fmt(s["down_per_site"], 0),
                    fmt(s["seconds"], 3),
                    str(s["rounds"]),
                ]
            )
    add("Per stage (bytes per site, median over rounds 2..; `examples` is round 1's only):\n")
    add(
        table(
            ["sites", "stage", "up bytes per site", "down bytes per site", "stage s", "rounds"],
            rows,
        )
        + "\n"
    )
    for p in r.points:
        a = p["accuracy"]
        add(
            f"- {p['sites']} sites, round 1: SecAgg+'s global model is within "
            f"{a['secagg_vs_fedavg64']:.2e} of a float64 FedAvg of the recomputed site models "
            f"(bound {a['bound']:.2e} from the quantisation settings; plain FedAvg "
            f"{a['plain_vs_fedavg64']:.2e}; SecAgg+ vs plain {a['secagg_vs_plain']:.2e}; the "
            f"round moved the model by up to {a['round1_update']:.2e}).\n"
        )
    add(reproduce_line(doc, "secagg") + "\n")
