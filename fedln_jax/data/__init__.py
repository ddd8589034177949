"""Datasets (uint8 images, int32 labels) and label-skew client partitions."""

from fedln_jax.data.partition import SCHEMES, class_counts, client_test_weights, partition
from fedln_jax.data.sources import Dataset, dataset_names, load_dataset, stratified_split

__all__ = [
    "Dataset",
    "SCHEMES",
    "class_counts",
    "client_test_weights",
    "dataset_names",
    "load_dataset",
    "partition",
    "stratified_split",
]
