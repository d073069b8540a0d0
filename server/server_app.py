"""The coordinator as a Flower ServerApp: a thin adapter over server.federation."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from study.config import Study
from server.federation import Federation, Progress


def build_server_app(study: Study | None = None, progress: Progress | None = None) -> ServerApp:
    """A ServerApp; `study` None reads the study from Flower's run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        the_study = study or Study.from_mapping(dict(context.run_config), source="run config")
        Federation(grid, the_study, progress=progress).run()

    return app


app = build_server_app()  # for `flwr run .` and the SuperLink
