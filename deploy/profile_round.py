#!/usr/bin/env python3
"""Where a deployed round's time goes: the same study simulated and deployed, side by side.

    python deploy/profile_round.py                      # demo study, 3 sites, 3 rounds
    python deploy/profile_round.py --set image-size=32 --out runs/profile

Runs `medfed run STUDY` (Flower's simulation engine) and `medfed deploy local
STUDY --sites N` (a real SuperLink and N SuperNodes) one after the other,
with the same settings, and reads both run folders (rounds.jsonl,
phases.jsonl): the deployed/simulated ratio per round and per phase is
measured in this one run. Then it takes apart what a SuperNode does per
message, in fresh processes as `flwr-clientapp` runs (each part measured
--repeat times, the median kept): interpreter start, `import flwr` (the
clientapp runtime), `import torch`, the rest of `import client.client_app`,
the site's shard from its cache, building the model. Polling delays are
Flower 1.42's own constants (read from its source, not measured): the
SuperNode asks the SuperLink for a message every 3 s when idle, SuperExec
asks the SuperNode for a task every FLWR_SUPEREXEC_TASK_POLL_INTERVAL s (1 s
default), the SuperNode checks for the app's reply every 0.5 s; medfed's
ServerApp pulls replies every 0.1 s.

Writes <out>/profile.json and prints the breakdown as a Markdown table.
Heavy: run it on an otherwise idle machine (`nice` does not make it fair).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# flwr 1.42.0 constants (supernode/start_client_internal.py, supercore/superexec/run_superexec.py)
SUPERNODE_IDLE_POLL_S = 3.0
SUPERNODE_REPLY_POLL_S = 0.5
SUPEREXEC_POLL_S = float(os.environ.get("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "1.0"))
SERVERAPP_POLL_S = 0.1  # server/grid.py ReportingGrid

# One flwr-clientapp's start, step by step, as the process that runs a message does it.
PROBE = textwrap.dedent(
    """
    import json, sys, time
    t = {"start": time.time()}
    import flwr.supernode.runtime.run_clientapp  # what flwr-clientapp imports first
    t["flwr"] = time.time()
    import torch
    t["torch"] = time.time()
    import client.client_app
    t["project"] = time.time()
    from study.config import Study
    from client.site import Site
    study = Study.from_toml(sys.argv[1], {"num-sites": int(sys.argv[2]), "out-dir": sys.argv[3]})
    site = Site(study, 0, study.num_sites)
    _ = site.shard
    t["shard"] = time.time()
    from study.task import build_model
    build_model(study.modality)
    t["model"] = time.time()
    print(json.dumps(t))
    """
)


def _medfed(args: list[str], env: dict, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        res = subprocess.run([str(BIN / "medfed"), *args], stdout=fh, stderr=subprocess.STDOUT,
                             env=env, cwd=ROOT, timeout=3600)  # fmt: skip
    if res.returncode != 0:
        sys.exit(f"profile_round: medfed {' '.join(args)} failed (log: {log})")
    return time.perf_counter() - t0


def _read(folder: Path) -> list[dict]:
    rounds = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines() if x]
    phases = {
        p["round"]: p
        for p in (json.loads(x) for x in (folder / "phases.jsonl").read_text().splitlines() if x)
    }
    out = []
    for r in rounds:
        ph = phases.get(r["round"], {})
        sites = r["sites"]
        out.append(
            {
                "round": r["round"],
                "seconds": r["seconds"],
                "train_phase_s": ph.get("train_round", 0.0),
                "evaluate_phase_s": ph.get("evaluate_round", 0.0),
                "holdout_s": ph.get("holdout", 0.0),
                "site_train_s": statistics.mean(s["seconds"]["train"] for s in sites),
                "site_crypto_s": statistics.mean(
                    s["seconds"]["encrypt"] + s["seconds"]["decrypt"] for s in sites
                ),
            }
        )
    return out


def _probe(study: str, sites: int, site_out: Path, env: dict, repeat: int) -> dict[str, float]:
    steps: dict[str, list[float]] = {}
    for _ in range(repeat):
        spawned = time.time()
        res = subprocess.run(
            [sys.executable, "-c", PROBE, study, str(sites), str(site_out)],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
        )  # fmt: skip
        if res.returncode != 0:
            sys.exit(f"profile_round: the start-up probe failed:\n{res.stderr[-2000:]}")
        t = json.loads(res.stdout.strip().splitlines()[-1])
        marks = [("interpreter", spawned, t["start"]), ("import flwr", t["start"], t["flwr"]),
                 ("import torch", t["flwr"], t["torch"]),
                 ("import medfed (rest)", t["torch"], t["project"]),
                 ("shard from cache", t["project"], t["shard"]),
                 ("build model", t["shard"], t["model"])]  # fmt: skip
        for name, a, b in marks:
            steps.setdefault(name, []).append(b - a)
    return {k: statistics.median(v) for k, v in steps.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("study", nargs="?", default="simulations/studies/demo.toml")
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/profile-round")
    p.add_argument("--repeat", type=int, default=3, help="start-up probes (median kept)")
    args = p.parse_args(argv)
    out = (ROOT / args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    env.setdefault("MEDFED_DATA_HOME", str(out / "data"))
    sets = [a for kv in [f"num-sites={args.sites}", *args.overrides] for a in ("--set", kv)]

    print(f"profile_round: simulating {args.study} ({args.sites} sites)", flush=True)
    sim_wall = _medfed(["run", args.study, *sets, "--out", str(out / "sim"), "--quiet"],
                       env, out / "sim.log")  # fmt: skip
    print("profile_round: deploying it (medfed deploy local)", flush=True)
    dep_wall = _medfed(["deploy", "local", args.study, "--sites", str(args.sites), *sets,
                        "--out", str(out / "deployed")], env, out / "deployed.log")  # fmt: skip
    sim, dep = _read(out / "sim"), _read(out / "deployed")
    print("profile_round: timing one clientapp start, step by step", flush=True)
    startup = _probe(args.study, args.sites, out / "deployed", env, args.repeat)

    later = [r["round"] for r in dep if r["round"] >= 2] or [r["round"] for r in dep]

    def mean(rows: list[dict], key: str) -> float:
        return statistics.mean(r[key] for r in rows if r["round"] in later)

    start_s = sum(startup.values())
    polling_s = SUPERNODE_IDLE_POLL_S / 2 + SUPEREXEC_POLL_S / 2 + SUPERNODE_REPLY_POLL_S / 2
    polling_s += SERVERAPP_POLL_S / 2
    phases = {}
    for phase, compute_key in (("train", "site_train_s"), ("evaluate", None)):
        d, s = mean(dep, f"{phase}_phase_s"), mean(sim, f"{phase}_phase_s")
        compute = mean(dep, compute_key) + mean(dep, "site_crypto_s") if compute_key else 0.0
        phases[phase] = {
            "deployed_s": d,
            "simulated_s": s,
            "process_start_s": start_s,
            "polling_expected_s": polling_s,
            "site_compute_s": compute,
            "rest_s": d - start_s - polling_s - compute,
        }
    result = {
        "study": args.study,
        "sites": args.sites,
        "overrides": args.overrides,
        "rounds_compared": later,
        "simulated": {"wall_s": sim_wall, "rounds": sim},
        "deployed": {"wall_s": dep_wall, "rounds": dep},
        "round_ratio": mean(dep, "seconds") / mean(sim, "seconds"),
        "round_1_ratio": dep[0]["seconds"] / sim[0]["seconds"],
        "clientapp_start_s": startup,
        "phases": phases,
        "flwr_polling_constants_s": {
            "supernode_idle": SUPERNODE_IDLE_POLL_S,
            "superexec": SUPEREXEC_POLL_S,
            "supernode_reply": SUPERNODE_REPLY_POLL_S,
            "serverapp": SERVERAPP_POLL_S,
        },
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
    }
    (out / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    print(_markdown(result))
    print(f"profile_round: {out / 'profile.json'}")
    return 0


def _markdown(r: dict) -> str:
    rows = [
        f"rounds {r['rounds_compared']}: deployed {statistics.mean(x['seconds'] for x in r['deployed']['rounds'] if x['round'] in r['rounds_compared']):.1f} s, "
        f"simulated {statistics.mean(x['seconds'] for x in r['simulated']['rounds'] if x['round'] in r['rounds_compared']):.1f} s "
        f"per round: ratio {r['round_ratio']:.1f}x (round 1: {r['round_1_ratio']:.1f}x)",
        "",
        "| per message (one site) | train phase | evaluate phase |",
        "| --- | ---: | ---: |",
    ]
    ph = r["phases"]
    for key, label in (
        ("deployed_s", "phase, deployed (wall)"),
        ("simulated_s", "phase, simulated (wall)"),
        ("process_start_s", "new clientapp process (below)"),
        ("polling_expected_s", "Flower polling (expected)"),
        ("site_compute_s", "training + crypto (rounds.jsonl)"),
        ("rest_s", "rest: evaluation, transfer, FAB, contention"),
    ):
        rows.append(f"| {label} | {ph['train'][key]:.2f} s | {ph['evaluate'][key]:.2f} s |")
    rows += ["", "| clientapp start, step | seconds |", "| --- | ---: |"]
    rows += [f"| {k} | {v:.2f} |" for k, v in r["clientapp_start_s"].items()]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
