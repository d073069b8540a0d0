"""Sweeps: a grid of studies from one file, one comparison table and plots.

A sweep file:

    name = "bandwidth"
    study = "demo.toml"          # base study, relative to this file
    out-dir = "runs/bandwidth"
    [set]                        # overrides for every point
    num-rounds = 2
    [grid]                       # every combination of these is one study
    exchange = ["none", "archive", "consortium"]
    image-size = [32, 64]

Instead of a [grid], a sweep may list its points one by one, for combinations
a product cannot express (e.g. SecAgg+ needs exchange = none):

    [[point]]
    dp = "none"
    [[point]]
    secure-aggregation = "secagg+"
    exchange = "none"

A key a point does not set keeps the base study's value, and the comparison
shows it. A sweep has at most `MAX_POINTS` (10,000) points: a larger grid is refused
at once, with its count, before any point is built (the points of a grid
are expanded lazily, one combination at a time). An optional [privacy]
table adds the attacks of
`simulations.privacy_probe` to every row (update inversion and the
ciphertext's known-plaintext attack):

    [privacy]
    attack-iterations = 100
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.tables import table
from simulations.privacy_probe import PrivacyProbe
from study.config import Study, StudyError
from study.schema import ComparisonDocument, Summary, write_comparison_json

SWEEP_KEYS = {"name", "study", "out-dir", "set", "grid", "point", "privacy"}
# the most studies one sweep may plan: 25 keys of 2 values are 33,554,432 points
MAX_POINTS = 10_000


@dataclass(frozen=True)
class Sweep:
    name: str
    base: Path
    out_dir: Path
    fixed: dict[str, Any]
    grid: dict[str, list[Any]]
    explicit: tuple[dict[str, Any], ...] = ()  # [[point]] tables, when there is no [grid]
    privacy: PrivacyProbe | None = None

    @classmethod
    def from_toml(cls, path: str | Path, out: str | None = None) -> Sweep:
        path = Path(path)
        if not path.is_file():
            raise StudyError(f"sweep file not found: {path}")
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise StudyError(f"{path}: not valid TOML: {exc}") from None
        unknown = set(doc) - SWEEP_KEYS
        if unknown:
            raise StudyError(
                f"{path}: unknown key(s) {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(SWEEP_KEYS))}"
            )
        grid = doc.get("grid", {})
        explicit = doc.get("point", [])
        if bool(grid) == bool(explicit):
            raise StudyError(
                f"{path}: give either [grid] (every combination of its lists) or "
                "[[point]] tables (one study each), not both and not neither"
            )
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise StudyError(f"{path}: grid.{key} must be a non-empty list, got {values!r}")
        if not isinstance(explicit, list) or not all(isinstance(p, dict) and p for p in explicit):
            raise StudyError(f"{path}: each [[point]] must be a table of study keys")
        count = len(explicit) or math.prod(len(values) for values in grid.values())
        if count > MAX_POINTS:
            sizes = [len(v) for v in grid.values()]
            what = (
                f"{len(explicit):,} [[point]] tables"
                if explicit
                else " x ".join(map(str, sizes)) + " values"
                if len(sizes) <= 6
                else f"{len(sizes)} keys of {min(sizes)} to {max(sizes)} values".replace(
                    f" {min(sizes)} to {min(sizes)} values", f" {min(sizes)} values each"
                )
            )
            raise StudyError(
                f"{path}: the sweep has {count:,} points ({what}), more than {MAX_POINTS:,}; "
                "split it into smaller sweeps or fix the values"
            )
        privacy = doc.get("privacy")
        if privacy is not None and not isinstance(privacy, dict):
            raise StudyError(f"{path}: [privacy] must be a table")
        base = (path.parent / doc.get("study", "demo.toml")).resolve()
        sweep = cls(
            name=doc.get("name", path.stem),
            base=base,
            out_dir=Path(out or doc.get("out-dir", f"runs/{path.stem}")).absolute(),
            fixed=dict(doc.get("set", {})),
            grid=dict(grid),
            explicit=tuple(dict(p) for p in explicit),
            privacy=None if privacy is None else PrivacyProbe.from_table(privacy, str(path)),
        )
        seen: set[str] = set()
        twice: set[str] = set()
        for point in sweep.iter_points():
            label = sweep.label(point)
            (twice if label in seen else seen).add(label)
        if twice:
            raise StudyError(f"{path}: the same point twice: {', '.join(sorted(twice))}")
        for point in sweep.iter_points():  # validate every study before running any
            sweep.study(point)
        return sweep

    @property
    def keys(self) -> list[str]:
        """The study keys that vary between points, in order of appearance."""
        if self.grid:
            return list(self.grid)
        return list(dict.fromkeys(k for p in self.explicit for k in p))

    @property
    def count(self) -> int:
        """How many points (studies) the sweep has, computed without building them."""
        if self.explicit:
            return len(self.explicit)
        return math.prod(len(values) for values in self.grid.values())

    def iter_points(self) -> Iterator[dict[str, Any]]:
        """The points one at a time: a grid's combinations are never all built at once."""
        if self.explicit:
            yield from (dict(p) for p in self.explicit)
            return
        keys = list(self.grid)
        for combo in itertools.product(*self.grid.values()):
            yield dict(zip(keys, combo, strict=True))

    def points(self) -> list[dict[str, Any]]:
        """Every point, as a list (at most MAX_POINTS: `from_toml` refuses more)."""
        if self.count > MAX_POINTS:
            raise StudyError(
                f"sweep {self.name!r}: {self.count:,} points, more than {MAX_POINTS:,}"
            )
        return list(self.iter_points())

    @staticmethod
    def label(point: dict[str, Any]) -> str:
        return ",".join(f"{k}={v}" for k, v in point.items())

    def study(self, point: dict[str, Any]) -> Study:
        out = self.out_dir / self.label(point).replace("/", "_")
        values = {
            **self.fixed,
            **point,
            "out-dir": str(out),
            "name": f"{self.name}[{self.label(point)}]".replace("/", "_"),
        }
        return Study.from_toml(self.base, values)


def point_columns(keys: list[str], point: dict[str, Any], study: Study) -> dict[str, Any]:
    """The varying keys of one row: the point's values, the base study's elsewhere."""
    return {k: point[k] if k in point else getattr(study, k.replace("-", "_")) for k in keys}


def comparison_row(point: dict[str, Any], study: Study, summary: Summary) -> dict[str, Any]:
    metric = "auroc" if study.modality == "xray" else "dice_mean"
    final = summary.final
    per_round = summary.bytes_per_round
    return {
        **point,
        "status": summary.status,
        "rounds": summary.rounds,
        "ciphertext_up_per_round": per_round["ciphertext_up"],
        "ciphertext_down_per_round": per_round["ciphertext_down"],
        "model_per_round": per_round["model_up"] + per_round["model_down"],
        "grant_per_round": per_round.get("grant_up", 0.0) + per_round.get("grant_down", 0.0),
        "bytes_per_round": per_round["message_up"] + per_round["message_down"],
        "message_up_per_round": per_round["message_up"],
        "message_down_per_round": per_round["message_down"],
        **{f"upload_s_{k}": v for k, v in summary.upload_seconds_per_round.items()},
        metric: final.get(metric, math.nan),
        "recon_psnr_worst": final.get("recon_psnr_worst", math.nan),
        # the (epsilon, delta) spent; no differential privacy: no bound (infinite)
        "epsilon": math.inf
        if study.dp == "none"
        else (summary.extra.get("privacy") or {}).get("epsilon", math.nan),
        "seconds": summary.seconds,
    }


def write_comparison(sweep: Sweep, rows: list[dict[str, Any]]) -> Path:
    sweep.out_dir.mkdir(parents=True, exist_ok=True)
    write_comparison_json(
        sweep.out_dir / "comparison.json",
        ComparisonDocument(
            sweep=sweep.name, grid=sweep.grid, points=list(sweep.explicit), rows=rows
        ),
    )
    cols = list(rows[0]) if rows else []
    lines = [f"# Sweep `{sweep.name}`", ""]
    trade = trade_off_table(sweep, rows)
    if trade is not None:
        header, body = trade
        lines += [
            "Privacy, utility and bandwidth: task metric, the (epsilon, delta) spent, "
            "message MB per round (all sites, both ways), PSNR of the update-inversion "
            "attack on one image and of the known-plaintext attack on the ciphertext, "
            "each with its mean guess in brackets (a gain near 0 dB: nothing leaked).",
            "",
            table(header, body),
            "",
            "Every column:",
            "",
        ]
    lines.append(table(cols, [[_cell(row[c]) for c in cols] for row in rows]))
    plots = plot_comparison(sweep, rows)
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = sweep.out_dir / "comparison.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def trade_off_table(
    sweep: Sweep, rows: list[dict[str, Any]]
) -> tuple[list[str], list[list[str]]] | None:
    """The privacy sweep's one table (None when the sweep has no [privacy])."""
    if not rows or "update_psnr" not in rows[0]:
        return None
    metric = "auroc" if "auroc" in rows[0] else "dice_mean"

    def db(row: dict, key: str) -> str:
        value, guess = row[f"{key}_psnr"], row[f"{key}_mean_guess_psnr"]
        if value is None or math.isnan(value):  # not applicable (null once written)
            return "-"
        return f"{value:.1f} ({guess:.1f})"

    header = [*sweep.keys, metric, "epsilon", "MB / round", "update PSNR dB", "KPA PSNR dB"]
    body = [
        [
            *(_cell(row[k]) for k in sweep.keys),
            _cell(row[metric]),
            _cell(row["epsilon"]),
            f"{row['bytes_per_round'] / 1e6:.2f}",
            db(row, "update"),
            db(row, "kpa"),
        ]
        for row in rows
    ]
    return header, body


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else "-" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def plot_comparison(sweep: Sweep, rows: list[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return []
    labels = [Sweep.label({k: r[k] for k in sweep.keys}) for r in rows]
    out = []
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) + 2), 4))
    up = [r["message_up_per_round"] / 1e6 for r in rows]
    down = [r["message_down_per_round"] / 1e6 for r in rows]
    x = range(len(rows))
    ax.bar(x, up, label="up (all sites)")
    ax.bar(x, down, bottom=up, label="down (all sites)")
    ax.set_xticks(list(x), labels, rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="MB per round", title=f"{sweep.name}: traffic per round")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = sweep.out_dir / "traffic.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append(path)
    links = [k for k in rows[0] if k.startswith("upload_s_")]
    if links:
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) + 2), 4))
        width = 0.8 / len(links)
        for i, link in enumerate(links):
            ax.bar(
                [j + i * width for j in x],
                [r[link] for r in rows],
                width=width,
                label=link.removeprefix("upload_s_"),
            )
        ax.set_yscale("log")
        ax.set_xticks([j + 0.4 - width / 2 for j in x], labels, rotation=45, ha="right", fontsize=7)
        ax.set(
            ylabel="seconds (slowest site, per round)",
            title="Upload time per round by hospital link",
        )
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        path = sweep.out_dir / "upload_time.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out
