"""A deployed round against the same round simulated (`medfed bench deploy-round`).

The same study (the demo by default, 3 sites) runs three ways, one after the
other in one run, on the same machine: on Flower's simulation engine (`medfed
run`), deployed with Flower's own isolation (`medfed deploy local --isolation
subprocess`: a new `flwr-clientapp` process per message) and deployed with
medfed's long-lived executor (`--isolation process`). Each study writes
rounds.jsonl (round seconds) and phases.jsonl (train/evaluate phase seconds,
measured by the ServerApp from the first message out to the last reply in);
the executor also logs every message it ran (its seconds split into message
in, app, reply out). The ratios deployed / simulated come from these files of
this one run. Rounds after the first are compared (round 1 holds Ray's and
the SuperNodes' start-up and the first shard decode; it is listed apart).

The machine is shared: its load average before and after is recorded, and
with `repeats` > 1 the three variants run in a rotated order per repeat so
that a burst of load does not always hit the same one.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks.common import Progress, quiet
from benchmarks.document import BenchDocument, documents
from benchmarks.result_types import DeployRoundResults
from benchmarks.tables import fmt, reproduce_line, shows_results, table
from study.schema import PhaseRecord, iter_phases

VARIANTS = {
    "simulated": "simulated (Ray)",
    "subprocess": "deployed, Flower's isolation (a process per message)",
    "process": "deployed, medfed executor (one process per site)",
}
TARGET_RATIO = 3.0  # a deployed round at most 3x its simulated round
ROOT = Path(__file__).resolve().parent.parent


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else float("nan")


def read_run(folder: Path) -> list[dict[str, Any]]:
    """Per round of a study folder: round seconds, phase seconds, site work seconds."""
    rows = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines() if x]
    phases: dict[int, PhaseRecord] = {}
    if (folder / "phases.jsonl").is_file():  # each line checked: SchemaError names it
        phases = {p.round: p for p in iter_phases(folder / "phases.jsonl")}
    out = []
    for r in rows:
        ph = phases.get(r["round"]) or PhaseRecord(r["round"], {})
        sites = [s for s in r["sites"] if s.get("ok")]
        out.append(
            {
                "round": r["round"],
                "seconds": r["seconds"],
                "train_phase_s": ph.train_round,
                "evaluate_phase_s": ph.evaluate_round,
                "aggregate_s": ph.aggregate,
                "holdout_s": ph.holdout,
                "site_train_s": _mean(s["seconds"]["train"] for s in sites),
                "site_crypto_s": _mean(
                    s["seconds"]["encrypt"] + s["seconds"]["decrypt"] for s in sites
                ),
                "sites_ok": len(sites),
            }
        )
    return out


def read_tasks(log_dir: Path, sites: int) -> dict[str, Any]:
    """The executors' task logs: per round and phase, the slowest site's message
    (it decides when the phase ends), and which processes ran the messages."""
    per_round: dict[int, dict[str, dict]] = {}
    pids = []
    for site in range(sites):
        path = log_dir / f"executor-site-{site}.tasks.jsonl"
        tasks = [json.loads(x) for x in path.read_text().splitlines() if x]
        pids.append(sorted({t["pid"] for t in tasks}))
        count: dict[str, int] = {}
        for t in tasks:
            kind = t["message_type"]
            if kind not in ("train", "evaluate"):
                continue
            count[kind] = count.get(kind, 0) + 1  # the k-th train message is round k's
            slot = per_round.setdefault(count[kind], {})
            if kind not in slot or t["seconds"] > slot[kind]["seconds"]:
                slot[kind] = {k: t[k] for k in ("seconds", "pull_s", "load_s", "app_s", "push_s")}
    return {
        "pids_per_site": pids,
        "slowest": {str(r): v for r, v in sorted(per_round.items())},
    }


def _medfed(args: list[str], env: dict, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        res = subprocess.run(
            [sys.executable, "-m", "simulations.cli", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            timeout=7200,
        )
    if res.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"medfed {' '.join(args[:2])} failed (exit {res.returncode}): {tail}")
    return time.perf_counter() - t0


def run_variant(variant: str, study: str, sets: list[str], sites: int, work: Path, env: dict):
    """One study run of `variant`; its rounds (and the executor's tasks)."""
    out = work / variant
    if variant == "simulated":
        args = ["run", study, *sets, "--out", str(out), "--quiet"]
    else:
        args = ["deploy", "local", study, "--sites", str(sites), *sets, "--out", str(out)]
        args += ["--isolation", variant]
    wall = _medfed(args, env, work / f"{variant}.log")
    doc: dict[str, Any] = {"wall_s": wall, "rounds": read_run(out)}
    if variant == "process":
        doc["tasks"] = read_tasks(out / "deploy-logs", sites)
    return doc


def compare(runs: dict[str, dict]) -> dict[str, Any]:
    """Deployed / simulated, per round and per phase (rounds >= 2 averaged)."""
    sim = runs["simulated"]["rounds"]
    later = [r["round"] for r in sim if r["round"] >= 2] or [r["round"] for r in sim]

    def mean(rows, key):
        return _mean(r[key] for r in rows if r["round"] in later)

    out: dict[str, Any] = {"rounds_compared": later}
    for variant in ("subprocess", "process"):
        if variant not in runs:
            continue
        dep = runs[variant]["rounds"]
        by_round = {r["round"]: r for r in dep}
        out[variant] = {
            "round_ratio": mean(dep, "seconds") / mean(sim, "seconds"),
            # the deployed runtime's own cost: seconds a round, not a ratio
            "overhead_s": mean(dep, "seconds") - mean(sim, "seconds"),
            "simulated_round_s": mean(sim, "seconds"),
            "deployed_round_s": mean(dep, "seconds"),
            "per_round": {
                str(r["round"]): by_round[r["round"]]["seconds"] / r["seconds"]
                for r in sim
                if r["round"] in by_round
            },
            "train_phase_ratio": mean(dep, "train_phase_s") / mean(sim, "train_phase_s"),
            "evaluate_phase_ratio": mean(dep, "evaluate_phase_s") / mean(sim, "evaluate_phase_s"),
            "study_ratio": runs[variant]["wall_s"] / runs["simulated"]["wall_s"],
        }
    if "process" in runs:
        own = out["process_owners"] = owners(runs["process"], later)
        ev = own.get("evaluate", {})
        if "wall_s" in ev:  # arithmetic, not measured: no evaluate message, its work in train
            folded = mean(runs["process"]["rounds"], "seconds") - ev["wall_s"] + ev["app_s"]
            out["process"]["folded_evaluate_ratio_estimate"] = folded / mean(sim, "seconds")
    return out


def owners(run: dict, later: list[int]) -> dict[str, dict[str, float]]:
    """Who owns a phase's seconds with the executor (rounds `later`, mean): the slowest
    site's message in the executor (message in, app, reply out) and the rest, outside
    every medfed process: the SuperNode's idle poll (0.25 s with medfed's launcher), SuperNode <->
    SuperLink transfer of the message and reply, the ServerApp's pull."""
    rows = {r["round"]: r for r in run["rounds"]}
    slowest = run["tasks"]["slowest"]
    out = {}
    for phase in ("train", "evaluate"):
        vals: dict[str, list[float]] = {}
        for rnd in later:
            task = slowest.get(str(rnd), {}).get(phase)
            wall = rows.get(rnd, {}).get(f"{phase}_phase_s")
            if task is None or wall is None:
                continue
            for k in ("pull_s", "app_s", "push_s", "seconds"):
                vals.setdefault(k, []).append(task[k])
            vals.setdefault("wall_s", []).append(wall)
            vals.setdefault("outside_s", []).append(wall - task["seconds"])
        out[phase] = {k: _mean(v) for k, v in vals.items()}
    return out


def run_deploy_round(
    *,
    study: str = "simulations/studies/demo.toml",
    sites: int = 3,
    overrides: tuple[str, ...] = (),
    repeats: int = 1,
    variants: tuple[str, ...] = tuple(VARIANTS),
    longer: int = 4,
    progress: Progress = quiet,
    work_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run the study simulated and deployed both ways, `repeats` times; the ratios.

    With `longer` > 1 the study also runs simulated and with the executor at a
    longer round (`longer` times its local epochs: the same data and messages,
    more training), so that the page can show whether the deployed cost is a
    fixed number of seconds a round or grows with the round."""
    if "simulated" not in variants:
        raise ValueError("deploy-round: the simulated variant is the baseline; keep it")
    load_before = os.getloadavg()
    tmp = tempfile.TemporaryDirectory(prefix="medfed-deploy-round-")
    base = Path(work_dir) if work_dir else Path(tmp.name)
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    env.setdefault("MEDFED_DATA_HOME", str(base / "data"))  # phantoms made once, shared
    sets = [a for kv in [f"num-sites={sites}", *overrides] for a in ("--set", kv)]
    repeat_docs = []
    try:
        for i in range(repeats):
            order = list(variants[i % len(variants) :]) + list(variants[: i % len(variants)])
            runs = {}
            for variant in order:
                progress(f"deploy-round: repeat {i + 1}/{repeats}, {VARIANTS[variant]}")
                work = base / f"repeat-{i + 1}"
                work.mkdir(parents=True, exist_ok=True)
                runs[variant] = run_variant(variant, study, sets, sites, work, env)
                progress(f"deploy-round: {variant} took {runs[variant]['wall_s']:.0f} s")
            repeat_docs.append({"order": order, "runs": runs, "compare": compare(runs)})
        longer_doc = None
        if longer > 1 and "process" in variants:
            epochs = _study(study, overrides).local_epochs * longer
            long_sets = [*sets, "--set", f"local-epochs={epochs}"]
            work = base / "longer"
            work.mkdir(parents=True, exist_ok=True)
            runs = {}
            for variant in ("simulated", "process"):
                progress(f"deploy-round: {longer}x local epochs, {VARIANTS[variant]}")
                runs[variant] = run_variant(variant, study, long_sets, sites, work, env)
                progress(f"deploy-round: {variant} took {runs[variant]['wall_s']:.0f} s")
            longer_doc = {
                "factor": longer,
                "local_epochs": epochs,
                "runs": runs,
                "compare": compare(runs),
            }
    finally:
        tmp.cleanup()
    load_after = os.getloadavg()
    summary = {}
    for variant in ("subprocess", "process"):
        ratios = [
            d["compare"][variant]["round_ratio"] for d in repeat_docs if variant in d["compare"]
        ]
        if ratios:
            summary[variant] = {"round_ratio_median": statistics.median(ratios), "values": ratios}
    return {
        "study": study,
        "sites": sites,
        "overrides": list(overrides),
        "wire_objects": wire_objects(study, overrides),
        "repeats": repeat_docs,
        "longer": longer_doc,
        "summary": summary,
        "target_ratio": TARGET_RATIO,
        "load": {
            "cpus": os.cpu_count(),
            "before_1_5_15": list(load_before),
            "after_1_5_15": list(load_after),
        },
    }


def wire_objects(study: str, overrides: tuple[str, ...] = ()) -> dict[str, int]:
    """Flower objects in one train message of `study` (its model and config), as it
    travels (packed, study.transport) and as it would unpacked: flwr 1.42 moves each
    object in its own request between every two processes on the way."""
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict

    from deploy.flwr_internals import get_all_nested_objects
    from study import transport
    from study.task import build_model

    model = build_model(_study(study, overrides).modality)
    torch = sys.modules["torch"]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # distinct values, as after training (equal Arrays are sent once)
        for tensor in model.state_dict().values():
            tensor.add_(torch.randn(tensor.shape, generator=gen))
    plain = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({"server-round": 1})}
    )
    return {
        "tensors": len(plain["arrays"]),
        "plain": len(get_all_nested_objects(plain)) + 1,  # + the message itself
        "packed": len(get_all_nested_objects(transport.pack(plain))) + 1,
    }


def _study(study: str, overrides: tuple[str, ...] = ()):
    from study.config import Study

    sets = dict(kv.split("=", 1) for kv in overrides)
    return Study.from_toml(ROOT / study if not Path(study).is_absolute() else study, sets)


# ----------------------------------------------------------------------------- the page
def target_row(docs: Mapping[str, BenchDocument | Mapping[str, Any]]) -> list[str] | None:
    """The Targets table's row: deployed round <= 3x simulated (executor)."""
    doc = documents(docs).get("deploy-round")
    if doc is None or not doc.ok:
        return None
    res: DeployRoundResults = doc.result
    if "process" not in res.summary:
        return None
    r = res.summary["process"]["round_ratio_median"]
    flower = res.summary.get("subprocess", {}).get("round_ratio_median")
    measured = f"{r:.2f}x with medfed's executor" + (
        f" ({flower:.2f}x with Flower's process per message)" if flower else ""
    )
    limit = res.target_ratio
    verdict = "yes" if r <= limit else f"no, {r / limit:.2f}x of the limit (see Deployed round)"
    return [f"deployed round <= {limit:g}x simulated (demo, 3 sites)", measured, verdict]


def deploy_round_section(
    docs: Mapping[str, BenchDocument | Mapping[str, Any]], add: Callable[[str], None]
) -> None:
    """Deployed against simulated rounds, and who owns each second of a deployed phase."""
    doc = documents(docs).get("deploy-round")
    add("## Deployed round\n")
    if not shows_results(doc, "deploy-round", add):
        return
    r: DeployRoundResults = doc.result
    last = r.repeats[-1]
    # ratios and seconds derived again from the stored rounds: the page follows the code
    runs = last["runs"]
    cmp_ = compare(runs)
    later = cmp_["rounds_compared"]
    load = r.load
    over = ", ".join(r.overrides) or "none"
    add(
        f"`{r.study}` with {r.sites} sites (overrides: {over}), run three ways one after "
        "the other in one run on the same machine: simulated (`medfed run`, Ray), deployed "
        "with Flower's own isolation (`medfed deploy local --isolation subprocess`: SuperExec "
        "starts a `flwr-clientapp` process per message) and deployed with medfed's executor "
        "(`--isolation process`, the default: one long-lived process per SuperNode runs every "
        "message, imports and the site's shard stay loaded). Round and phase seconds are the "
        "ServerApp's own (`rounds.jsonl`, `phases.jsonl`). Ratios compare rounds "
        f"{', '.join(map(str, later))}; round 1 also holds start-up and the first shard decode. "
        f"Machine load: {load['cpus']} logical cores, load average (1, 5, 15 min) "
        f"{_load(load['before_1_5_15'])} before and {_load(load['after_1_5_15'])} after: the "
        "machine was shared with other work, so absolute seconds are slower than on an idle "
        f"machine; the ratios are of runs side by side. Order of this run: "
        f"{', '.join(last['order'])}.\n"
    )
    sim = {x["round"]: x for x in runs["simulated"]["rounds"]}
    dep = {
        v: {x["round"]: x for x in runs[v]["rounds"]}
        for v in ("subprocess", "process")
        if v in runs
    }
    rows = []
    for rnd in sorted(sim):
        row = [str(rnd), fmt(sim[rnd]["seconds"], 1)]
        for v in ("subprocess", "process"):
            d = dep.get(v, {}).get(rnd)
            row.append(
                f"{d['seconds']:.1f} ({d['seconds'] / sim[rnd]['seconds']:.2f}x)" if d else "n/a"
            )
        rows.append(row)
    mean_row = [
        f"rounds {later[0]}..{later[-1]}, mean",
        fmt(_mean(sim[x]["seconds"] for x in later), 1),
    ]
    for v in ("subprocess", "process"):
        c = cmp_.get(v)
        m = _mean(dep[v][x]["seconds"] for x in later if x in dep.get(v, {})) if c else None
        mean_row.append(
            f"**{m:.1f} ({c['round_ratio']:.2f}x, {_signed(c['overhead_s'])} s)**" if c else "n/a"
        )
    rows.append(mean_row)
    head = ["round", "simulated s", "Flower subprocess s (ratio)", "medfed executor s (ratio)"]
    add(table(head, rows) + "\n")
    add(
        "In the mean row, the seconds after the ratio are the deployed round minus the "
        "simulated round: the deployed runtime's own cost a round.\n"
    )
    _longer_section(r, cmp_, add)
    prow = []
    for phase in ("train", "evaluate"):
        key = f"{phase}_phase_s"
        s = _mean(sim[x][key] for x in later)
        cells = [f"{phase} phase", fmt(s, 2)]
        for v in ("subprocess", "process"):
            d = _mean(dep[v][x][key] for x in later) if v in dep else None
            cells.append(f"{d:.2f} ({d / s:.2f}x)" if d is not None else "n/a")
        prow.append(cells)
    prow.append(
        [
            "a site's training (in the handler)",
            fmt(_mean(sim[x]["site_train_s"] for x in later), 2),
            *[fmt(_mean(dep[v][x]["site_train_s"] for x in later), 2) if v in dep else "n/a"
              for v in ("subprocess", "process")],
        ]
    )  # fmt: skip
    add("Per phase, rounds compared, mean seconds (ratio to simulated):\n")
    add(table(["phase", "simulated", "Flower subprocess", "medfed executor"], prow) + "\n")
    own = cmp_.get("process_owners")
    if own:
        orow = []
        for phase in ("train", "evaluate"):
            o = own[phase]
            orow.append(
                [
                    f"{phase} phase",
                    fmt(o.get("wall_s"), 2),
                    fmt(o.get("pull_s"), 2),
                    fmt(o.get("app_s"), 2),
                    fmt(o.get("push_s"), 2),
                    fmt(o.get("outside_s"), 2),
                ]
            )
        add(
            "Who owns a deployed phase's seconds with the executor (the slowest site's message, "
            "which ends the phase; rounds compared, mean). *Message in*: from the task to the "
            "message in the executor, which includes waiting for the SuperNode to finish "
            "receiving it from the SuperLink (Flower's Fleet API, object by object); *app*: "
            "medfed's ClientApp (training or evaluation, encryption); *reply out*: the reply "
            "into the SuperNode. *Outside*: phase minus that message, in no medfed process: "
            "the SuperNode's idle poll of the SuperLink (flwr 1.42 hard-codes 3 s; medfed's "
            "SuperNode launcher makes it 0.25 s), "
            "its sending of the reply to the SuperLink, the ServerApp's pull (0.1 s)."
            + _wire_text(r.wire_objects)
            + "\n"
        )
        add(
            table(["phase", "wall s", "message in s", "app s", "reply out s", "outside s"], orow)
            + "\n"
        )
        pids = runs["process"]["tasks"]["pids_per_site"]
        add(
            f"Processes that ran the ClientApp, per site: {', '.join(str(len(p)) for p in pids)} "
            "(one each, for every message of the study).\n"
        )
    add(_verdict(r, cmp_) + "\n")
    add(reproduce_line(doc, "deploy-round") + "\n")


def _longer_section(r: DeployRoundResults, cmp_: dict, add: Callable[[str], None]) -> None:
    """The executor's cost a round at the study's round length and at a longer round."""
    longer = r.longer
    if not longer or "process" not in cmp_:
        return
    long_cmp = compare(longer["runs"])
    base, long_ = cmp_["process"], long_cmp["process"]
    epochs = longer["local_epochs"] // longer["factor"]
    rows = [
        [
            f"the study's ({epochs} local epoch{'s' if epochs != 1 else ''})",
            fmt(base["simulated_round_s"], 1),
            fmt(base["deployed_round_s"], 1),
            _signed(base["overhead_s"]),
            f"{base['round_ratio']:.2f}x",
        ],
        [
            f"{longer['factor']}x longer ({longer['local_epochs']} local epochs)",
            fmt(long_["simulated_round_s"], 1),
            fmt(long_["deployed_round_s"], 1),
            _signed(long_["overhead_s"]),
            f"{long_['round_ratio']:.2f}x",
        ],
    ]
    grew = long_["simulated_round_s"] / base["simulated_round_s"]
    # proportional would be base overhead x grew; half of that or less reads as fixed
    fixed = long_["overhead_s"] <= max(base["overhead_s"], 0.0) * (1 + grew) / 2 + 0.5
    add(
        "Is the executor's cost seconds a round, or a share of the round? The same study "
        f"with {longer['factor']}x its local epochs (the same data and messages, more "
        "training), simulated and deployed with the executor one after the other in this run, "
        f"rounds {', '.join(map(str, long_cmp['rounds_compared']))}, mean: the simulated round "
        f"grew {grew:.1f}x and the deployed overhead went from {_signed(base['overhead_s'])} "
        f"to {_signed(long_['overhead_s'])} s. "
        + (
            "It did not grow with the round, so the ratio falls as rounds get longer: the "
            "seconds a round are the figure that travels, the ratio holds only for this "
            "round length."
            if fixed
            else "It grew with the round: the ratio is the figure that travels."
        )
        + " One run each, on a shared machine: differences under a second are within its "
        "noise.\n"
    )
    head = ["round length", "simulated s", "executor s", "overhead s", "ratio"]
    add(table(head, rows) + "\n")


def _signed(seconds: float) -> str:
    return f"{round(seconds, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"


def _wire_text(wire: dict | None) -> str:
    if not wire:
        return ""
    return (
        f" Flower moves a message object by object, one request each between every two "
        f"processes on its way; medfed packs each ArrayRecord into one Array "
        f"(`study/transport.py`), so a train message of this study's model "
        f"({wire['tensors']} tensors) is {wire['packed']} objects instead of {wire['plain']}."
    )


def _load(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def _verdict(r: DeployRoundResults, cmp_: dict) -> str:
    c = cmp_.get("process")
    if c is None:
        return ""
    ratio, limit = c["round_ratio"], r.target_ratio
    flower = cmp_.get("subprocess", {}).get("round_ratio")
    text = (
        f"Target: a deployed round at most {limit:g}x its simulated round. Measured: "
        f"{ratio:.2f}x with the executor"
        + (f", {flower:.2f}x with Flower's process per message" if flower else "")
        + (": met." if ratio <= limit else ": not met.")
    )
    own = cmp_.get("process_owners")
    if own and ratio > limit:
        outside = sum(own[p].get("outside_s", 0.0) + own[p].get("pull_s", 0.0) for p in own)
        text += (
            f" Per round about {outside:.1f} s of the deployed round is Flower's transport and "
            "polling (message in and outside, both phases), which no medfed process runs; "
            "the rest is medfed's handlers, as in simulation."
        )
        folded = c.get("folded_evaluate_ratio_estimate")
        if folded is not None:
            text += (
                " Arithmetic on these parts, not measured: with the site evaluation folded into "
                "the next train message (one message a round instead of two; the server's and "
                f"the ClientApp's protocol, not the runtime's) a round would be about "
                f"{folded:.1f}x."
            )
    return text
