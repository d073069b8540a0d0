"""The coordinator as a Flower ServerApp: a thin adapter over server.federation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import StudyOutcome, run_study
from server.holdout import HoldoutSource, study_holdout
from server.progress import Events, Listener
from study.config import Study


def build_server_app(
    study: Study | None = None,
    *,
    listener: Listener | None = None,
    holdout: HoldoutSource = study_holdout,
    on_outcome: Callable[[StudyOutcome], None] | None = None,
) -> ServerApp:
    """A ServerApp; `study` None reads the study from Flower's run config.

    Progress events go to `<out-dir>/events.jsonl` and to `listener`; the
    study's outcome (summary, rounds, final model) to `on_outcome`.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        the_study = study or Study.from_mapping(dict(context.run_config), source="run config")
        out = Path(the_study.out_dir).absolute()
        out.mkdir(parents=True, exist_ok=True)
        events = Events(out / "events.jsonl", listener)
        outcome = run_study(grid, the_study, events=events, holdout=holdout)
        if on_outcome is not None:
            on_outcome(outcome)

    return app


app = build_server_app()  # for `flwr run .` and the SuperLink
