"""Data sets: registry, embedded sets, standard on-disk formats, client partitions."""

from bastion.data.dataset import Dataset
from bastion.data.partition import dirichlet_partition, iid_partition, partition
from bastion.data.registry import EMBEDDED, load, names

__all__ = ["EMBEDDED", "Dataset", "dirichlet_partition", "iid_partition", "load", "names",
           "partition"]
