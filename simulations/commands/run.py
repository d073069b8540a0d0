"""`medfed run [STUDY.toml] [--set key=value ...] [--out DIR] [--resume [--trust-checkpoint]]`"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from rich import box
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from study.config import Study, parse_overrides
from study.schema import RoundRecord, read_rounds

DEFAULT_STUDY = Path(__file__).resolve().parent.parent / "studies" / "demo.toml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a study on Flower's simulation engine",
        description="Run a study (TOML file) with one simulated hospital per site "
        "on Flower's simulation engine (Ray), then print its results.",
    )
    add_study_args(p)
    add_resume_args(p)
    p.add_argument("--quiet", action="store_true", help="no live progress, only the result table")
    p.set_defaults(func=main)


def add_study_args(p: argparse.ArgumentParser) -> None:
    """STUDY, --set KEY=VALUE and --out: shared by run and deploy."""
    p.add_argument(
        "study", nargs="?", default=str(DEFAULT_STUDY), help="study file (default: the demo study)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one study key, e.g. --set num-rounds=5 (repeatable)",
    )
    p.add_argument("--out", help="output folder (default: the study's out-dir)")


def add_resume_args(p: argparse.ArgumentParser) -> None:
    """--resume and --trust-checkpoint: shared by run and deploy local / submit."""
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed study from its last completed round",
    )
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="with --resume: accept a checkpoint signed by a key you do not hold (another "
        "operator's run, a folder an older medfed wrote); its content is validated, then "
        "re-signed with your key (docs/SECURITY.md)",
    )


def load_study(
    path: str,
    overrides: list[str],
    out: str | None,
    resume: bool = False,
    trust_checkpoint: bool = False,
) -> Study:
    values = parse_overrides(overrides)
    if out:
        values["out-dir"] = out
    if resume:
        values["resume"] = True
    if trust_checkpoint:
        values["trust-checkpoint"] = True
    study = Study.from_toml(path, values)
    return study.replace(out_dir=str(Path(study.out_dir).absolute()))


def main(args: argparse.Namespace) -> int:
    from simulations.supervise import run_study_process

    # a StudyError is a ValueError: the CLI prints it as one line
    study = load_study(args.study, args.overrides, args.out, args.resume, args.trust_checkpoint)
    console = Console(stderr=True)
    console.print(
        f"[bold]medfed[/] study [cyan]{study.name}[/]: {study.num_sites} sites x "
        f"{study.num_rounds} rounds, {study.modality}, method {study.method}, "
        f"exchange {study.exchange} -> {study.out_dir}"
    )
    display = ProgressDisplay(study, console, enabled=not args.quiet)
    with display:
        result = run_study_process(study, display.update)
    Console().print(result_table(study, result.rounds))
    console.print(f"results: {study.out_dir}/summary.json  ({result.wall_seconds:.1f} s)")
    return 0


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "exact"
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def result_table(study: Study, rounds: list[RoundRecord] | None = None) -> Table:
    """Per-round table of the study's rounds (read from its rounds.jsonl when not given)."""
    lines = read_rounds(study.out_dir) if rounds is None else rounds
    metric = "auroc" if study.modality == "xray" else "dice_mean"
    short = "auroc" if study.modality == "xray" else "dice"
    table = Table(
        title=f"{study.name}: per round",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        caption="MB: all sites; held-out: server test set; fed: sites' own test sets",
    )
    grants = any(line.totals.get("grant_up") or line.totals.get("grant_down") for line in lines)
    privacy = any("privacy" in line.extra for line in lines)
    columns = ["round", "sites ok\n/ sampled", "ciphertext MB\nup / down", "model MB\nup / down"]
    columns += ["grants kB\nup / down"] if grants else []
    columns += [f"held-out\n{short}", f"fed\n{short}", "PSNR\nmin dB"]
    columns += ["epsilon"] if privacy else []
    for col in [*columns, "s"]:
        table.add_column(col, justify="right")
    for line in lines:
        g, t = line.global_, line.totals
        row = [
            str(line.round),
            f"{len(line.trained_sites)}/{len(line.sampled_sites)}",
            f"{_mb(t['ciphertext_up'])} / {_mb(t['ciphertext_down'])}",
            f"{_mb(t['model_up'])} / {_mb(t['model_down'])}",
        ]
        if grants:
            row.append(f"{t.get('grant_up', 0) / 1e3:.1f} / {t.get('grant_down', 0) / 1e3:.1f}")
        row += [
            _fmt(g.get(metric)),
            _fmt(g.get(f"fed_{metric}")),
            _fmt(g.get("recon_psnr_worst"), 1),
        ]
        if privacy:
            row.append(_fmt((line.extra.get("privacy") or {}).get("epsilon"), 2))
        table.add_row(*row, f"{line.seconds:.1f}")
    return table


class ProgressDisplay:
    """Live line: round, sites done, bytes so far."""

    def __init__(self, study: Study, console: Console, enabled: bool = True) -> None:
        self.study, self.console, self.enabled = study, console, enabled
        self.round, self.phase, self.done, self.of, self.bytes = (
            0,
            "starting",
            0,
            study.num_sites,
            0,
        )
        self.live = (
            Live(self._render(), console=console, refresh_per_second=4, transient=True)
            if enabled
            else None
        )

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.__exit__(*exc)

    def _render(self) -> Text:
        return Text.from_markup(
            f"[bold]round {self.round}/{self.study.num_rounds}[/] · {self.phase} "
            f"{self.done}/{self.of} sites · {self.bytes / 1e6:.2f} MB moved so far"
        )

    def update(self, event: dict) -> None:
        kind = event["event"]
        if kind == "start":
            self.round = event["from_round"]
            self.phase = "site start-up and first round"
        elif kind == "waiting":
            self.round = event["round"]
            self.phase = (
                f"waiting up to {event['seconds']:g} s for {', '.join(event['sites'])} to reconnect"
            )
            self.console.print(f"round {self.round}: {self.phase} (rejoin-wait)")
        elif kind == "reply":
            self.round, self.phase, self.done, self.of = (
                event["round"],
                event["phase"],
                event["done"],
                event["of"],
            )
        elif kind == "round":
            line = event["line"]
            self.bytes += sum(
                sum(s["bytes"][k] for k in ("message_up", "message_down")) for s in line["sites"]
            )
            # a site fraction-train did not sample is neither ok nor failed
            sampled = [s for s in line["sites"] if s.get("sampled", True)]
            ok = sum(s["ok"] for s in sampled)
            failed = [f"{s['site']} ({s['error']})" for s in line["sites"] if not s["ok"]]
            left_out = len(line["sites"]) - len(sampled)
            msg = f"round {line['round']} done: {ok} sites ok"
            msg += f", {left_out} not sampled" if left_out else ""
            msg += f", {line['seconds']:.1f} s"
            if failed:
                msg += "; failed: " + "; ".join(failed)
            self.console.print(msg)
            self.round, self.phase, self.done = line["round"] + 1, "train", 0
        elif kind == "stopped":
            self.console.print(f"round {event['round']}: study stopped: {event['reason']}")
        elif kind == "warning":
            self.console.print(f"[yellow]warning:[/] {escape(event['message'])}")
        if self.live:
            self.live.update(self._render())
