"""byzbn.nn: the federated BN layers, the pass that drives them, their autograd functions, the converter
that federates any model with BN layers, and the built-in models (the FBN CNN, ResNet-20, ResNet-18)."""
from byzbn.nn.bn_passes import MODES, STATS_BACKENDS, BNPass, BNStats, LayerOutput, PassRecord, run_bn_pass
from byzbn.nn.functional import KernelClientBatchNorm, KernelMoments, client_moments
from byzbn.nn.models import make_cnn, norm_layers
from byzbn.nn.norm import NORM_LAYER_NAMES_ATTR, FederatedBatchNorm, HybridBatchNorm, federated_bn_layers
from byzbn.nn.federate import federate, is_federated
from byzbn.nn.resnet import make_resnet18, make_resnet20
from byzbn.nn.zoo import DEFAULT_MODEL, MODELS, build_model, model_builder, plain_model, register_model

__all__ = ["MODES", "STATS_BACKENDS", "BNPass", "BNStats", "LayerOutput", "PassRecord", "run_bn_pass",
           "KernelClientBatchNorm", "KernelMoments", "client_moments", "make_cnn", "norm_layers",
           "NORM_LAYER_NAMES_ATTR", "FederatedBatchNorm", "HybridBatchNorm", "federated_bn_layers", "federate",
           "is_federated", "make_resnet18", "make_resnet20", "DEFAULT_MODEL", "MODELS", "build_model",
           "model_builder", "plain_model", "register_model"]
