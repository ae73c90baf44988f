"""byzbn.data: the datasets a run trains on and their split among the honest clients.

    from byzbn.data import load_dataset, partition
    ds = load_dataset("mnist5k")                              # standardized tensors, fixed test split
    parts = partition(ds.y_train, 8, "gamma:0.5", seed=0)     # 8 disjoint, equal-size index tensors

`datasets` loads (mnist5k, digits, cifar10, npz:PATH); `partitioning` splits (iid, gamma:G,
dirichlet:A, extreme). The module is called partitioning, not partition, so that the function
`byzbn.data.partition` never shadows a submodule of the same name.
"""
from byzbn.data.datasets import DATASET_NAMES, NPZ_KEYS, NPZ_PREFIX, SPLIT_SEED, TEST_FRACTION, Dataset, load_dataset
from byzbn.data.partitioning import PARTITION_KINDS, label_histogram, parse_partition, partition

__all__ = ["DATASET_NAMES", "NPZ_KEYS", "NPZ_PREFIX", "SPLIT_SEED", "TEST_FRACTION", "Dataset", "load_dataset",
           "PARTITION_KINDS", "label_histogram", "parse_partition", "partition"]
