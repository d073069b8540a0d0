#!/usr/bin/env python3
"""Where a deployed round's time goes: the same study simulated and deployed, side by side.

    python deploy/profile_round.py                      # demo study, 3 sites, 3 rounds
    python deploy/profile_round.py --set image-size=32 --out runs/profile

Runs the study three ways one after the other, with the same settings
(benchmarks/deploy_round.py, also `medfed bench deploy-round`):
`medfed run STUDY` (Flower's simulation engine), `medfed deploy local STUDY
--sites N --isolation subprocess` (a real SuperLink and N SuperNodes, a new
flwr-clientapp process per message) and the same with `--isolation process`
(medfed's long-lived executor per SuperNode), and reads the run folders
(rounds.jsonl, phases.jsonl, the executors' task logs): the deployed /
simulated ratio per round and per phase is measured in this one run, and a
deployed phase's seconds are split between the executor (message in, app,
reply out) and what happens outside every medfed process. Then it takes
apart what a SuperNode does per message with Flower's isolation, in fresh
processes as `flwr-clientapp` runs (each part measured --repeat times, the
median kept): interpreter start, `import flwr` (the clientapp runtime),
`import torch`, the rest of `import client.client_app`, the site's shard from
its cache, building the model. Polling delays are Flower 1.42's own constants
(read from its source, not measured): the SuperNode asks the SuperLink for a
message every 3 s when idle, SuperExec asks the SuperNode for a task every
FLWR_SUPEREXEC_TASK_POLL_INTERVAL s (1 s default), the SuperNode checks for
the app's reply every 0.5 s; medfed's ServerApp pulls replies every 0.1 s,
medfed's executor asks for tasks every 0.1 s.

Writes <out>/profile.json and prints the breakdown as Markdown.
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
    import importlib
    importlib.import_module(sys.argv[4])  # what flwr-clientapp imports first
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


def _probe(study: str, sites: int, site_out: Path, env: dict, repeat: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    from deploy.flwr_internals import CLIENTAPP_RUNTIME_MODULE as RUNTIME_MODULE

    steps: dict[str, list[float]] = {}
    for _ in range(repeat):
        spawned = time.time()
        res = subprocess.run(
            [sys.executable, "-c", PROBE, study, str(sites), str(site_out), RUNTIME_MODULE],
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

    sys.path.insert(0, str(ROOT))
    from benchmarks.deploy_round import run_deploy_round

    os.environ.setdefault("MEDFED_DATA_HOME", env["MEDFED_DATA_HOME"])
    bench = run_deploy_round(
        study=args.study,
        sites=args.sites,
        overrides=tuple(args.overrides),
        progress=lambda m: print(f"profile_round: {m}", flush=True),
        work_dir=out,
    )
    runs = bench["repeats"][0]["runs"]
    sim, dep = runs["simulated"]["rounds"], runs["subprocess"]["rounds"]
    sim_wall, dep_wall = runs["simulated"]["wall_s"], runs["subprocess"]["wall_s"]
    flower_site = out / "repeat-1" / "subprocess"
    print("profile_round: timing one clientapp start, step by step", flush=True)
    startup = _probe(args.study, args.sites, flower_site, env, args.repeat)

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
        "executor": bench["repeats"][0]["compare"],
        "bench": bench,
    }
    (out / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    from benchmarks.deploy_round import deploy_round_section

    page: list[str] = []
    doc = {"results": bench, "command": "python deploy/profile_round.py", "created": "now"}
    deploy_round_section({"deploy-round": {**doc, "seconds": sim_wall + dep_wall}}, page.append)
    print("\n".join(page[1:-1]))
    print("With Flower's isolation (a process per message):")
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
