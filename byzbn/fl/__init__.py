"""byzbn.fl: the federated runner — scenarios, the training passes, Robust-DSGD and FedAvg.

One DSGD step reads top to bottom: Federation.step (byzbn.fl.dsgd) → the scheme's BNPass → one pass
(byzbn.fl.passes) → the BN layers (byzbn.nn) → the kernels → the server update.
"""
from byzbn.fl.dsgd import Federation
from byzbn.fl.fedavg import LOCAL_ENGINES, FedAvgFederation
from byzbn.fl.federation import FederationBase
from byzbn.fl.passes import ENGINES, PER_CLIENT_GRADS, PassResult, choose_pass
from byzbn.fl.scenario import SCENARIOS, TARGETS, Scenario, make_scenario
from byzbn.fl.seeds import step_seed

__all__ = ["Federation", "FederationBase", "LOCAL_ENGINES", "FedAvgFederation", "ENGINES", "PER_CLIENT_GRADS", "PassResult",
           "choose_pass", "SCENARIOS", "TARGETS", "Scenario", "make_scenario", "step_seed"]
