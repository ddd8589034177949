"""Datasets (uint8 images, int32 labels) and label-skew client partitions."""

from fedln_jax.data.dataset import Dataset, stratified_split
from fedln_jax.data.partition import SCHEMES, class_counts, client_test_weights, partition
from fedln_jax.data.sources import dataset_names, load_dataset

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
