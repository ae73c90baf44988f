"""Run an experiment on Flower's Simulation Engine in this process (the `python -m byzbn.flower` command).

The ServerApp runs in a thread of this process and the ClientApps on the Ray backend's actors, one
SuperNode per client. Offline: telemetry and Flower's update check are off (Ray prints at most warnings).
"""
from __future__ import annotations

import logging
import os

OFFLINE_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
               # Ray's FutureWarning about overriding visible accelerators when a client asks for no GPU
               "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


def offline() -> None:
    """Turn Flower's telemetry and update check off (before flwr is imported) unless the caller chose otherwise."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def backend_config(client_cpus: float) -> dict:
    """The Ray backend: every CPU of this machine, `client_cpus` per client, no GPU."""
    return {"client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 1, "logging_level": "ERROR"}}


def simulate(experiment) -> list[dict]:
    """Run the experiment's every run on `experiment.supernodes` simulated SuperNodes; returns the summary."""
    offline()
    from flwr.simulation import run_simulation

    from byzbn.flower.client import make_client_app
    from byzbn.flower.server import flower_logs, make_server_app

    # run_simulation is the in-process engine: its deprecation notice (it points to `flwr run`, which
    # byzbn also supports) is left out, the warnings of a run are not.
    with flower_logs(logging.INFO if experiment.flower_logs else logging.ERROR):
        run_simulation(server_app=make_server_app(experiment), client_app=make_client_app(),
                       num_supernodes=experiment.supernodes, backend_config=backend_config(experiment.client_cpus))
    if not experiment.summary:
        raise RuntimeError("the Flower simulation ended without running the experiment (see Flower's log above)")
    return experiment.summary


__all__ = ["OFFLINE_ENV", "offline", "backend_config", "simulate"]
