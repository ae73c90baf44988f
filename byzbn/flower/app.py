"""The Flower app that pyproject.toml's [tool.flwr.app.components] points at: `flwr run .` runs it.

    serverapp = "byzbn.flower.app:server_app"
    clientapp = "byzbn.flower.app:client_app"

The ServerApp reads the experiment from the run config ([tool.flwr.app.config]: attack_eval's options
without their dashes, overridable with `flwr run . -c "schemes='fbn' rounds=10"`), validates it as the
command does, and runs it on the federation's SuperNodes (one per client: set the simulation's
num-supernodes to --clients). Outputs go to the run config's `out` (default runs/<timestamp> under the
ServerApp's working directory: give an absolute path).
"""
from __future__ import annotations

from byzbn.flower.simulation import offline

offline()

from flwr.app import Context  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from byzbn.flower.client import make_client_app  # noqa: E402
from byzbn.flower.experiment import experiment_from_run_config  # noqa: E402
from byzbn.flower.server import run_experiment  # noqa: E402

client_app = make_client_app()
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    run_experiment(grid, experiment_from_run_config(context.run_config))


__all__ = ["client_app", "server_app"]
