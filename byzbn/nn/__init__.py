"""byzbn.nn: the federated BN layers, the pass that drives them, their autograd functions, and the CNN."""
from byzbn.nn.bn_pass import MODES, STATS_BACKENDS, BNPass, BNStats, LayerOutput, PassRecord, bn_pass
from byzbn.nn.functional import KernelClientBatchNorm, KernelMoments, client_moments
from byzbn.nn.models import make_cnn, norm_layers
from byzbn.nn.norm import FederatedBatchNorm, HybridBatchNorm, federated_bn_layers

__all__ = ["MODES", "STATS_BACKENDS", "BNPass", "BNStats", "LayerOutput", "PassRecord", "bn_pass",
           "KernelClientBatchNorm", "KernelMoments", "client_moments", "make_cnn", "norm_layers",
           "FederatedBatchNorm", "HybridBatchNorm", "federated_bn_layers"]
