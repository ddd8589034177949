"""CIFAR-100, 50 clients x 2 classes (every class held by one client), paper CNN.

The paper uses 50 and 20 clients on CIFAR-100; for the 20-client setting add
`num_clients=20 classes_per_client=5`. Classes per client are our reading (the
protocol text available to us gives the client counts, not the split).

One config for the five normalizers of this table row; pick the normalizer on the command line:

    fedln-jax run --config experiments/configs/paper_cifar100.py --workdir runs/paper_cifar100/none norm=none
    fedln-jax run --config experiments/configs/paper_cifar100.py --workdir runs/paper_cifar100/bn norm=bn
    fedln-jax run --config experiments/configs/paper_cifar100.py --workdir runs/paper_cifar100/gn norm=gn
    fedln-jax run --config experiments/configs/paper_cifar100.py --workdir runs/paper_cifar100/ln norm=ln
    fedln-jax run --config experiments/configs/paper_cifar100.py --workdir runs/paper_cifar100/fn norm=fn

Augmentation: random crop 32 with padding 4 + horizontal flip (augment=auto).
Pixels in [0, 1], no mean/std normalization.

CIFAR comes through TFDS: with data_dir empty it is read from ~/tensorflow_datasets (or
$TFDS_DATA_DIR), and downloaded there once when TensorFlow is installed.
Re-running a command on its workdir resumes from the latest checkpoint (every 500 rounds).
"""
from fedln_jax.config import paper_protocol


def get_config():
    # The paper's protocol (docs/method.md#protocol, fedln_jax.config.PAPER_PROTOCOL) plus this table row's setting.
    return paper_protocol(
        dataset="cifar100",
        partition="n_class",
        classes_per_client=2,
        num_clients=50,
    )
