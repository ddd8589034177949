"""CIFAR-10, one class per client (10 clients x 1 class, 5,000 images each), paper CNN.

One config for the five normalizers of this table row; pick the normalizer on the command line:

    fedln-jax run --config experiments/configs/paper_cifar10_one_class_cnn.py --workdir runs/paper_cifar10_one_class_cnn/none norm=none
    fedln-jax run --config experiments/configs/paper_cifar10_one_class_cnn.py --workdir runs/paper_cifar10_one_class_cnn/bn norm=bn
    fedln-jax run --config experiments/configs/paper_cifar10_one_class_cnn.py --workdir runs/paper_cifar10_one_class_cnn/gn norm=gn
    fedln-jax run --config experiments/configs/paper_cifar10_one_class_cnn.py --workdir runs/paper_cifar10_one_class_cnn/ln norm=ln
    fedln-jax run --config experiments/configs/paper_cifar10_one_class_cnn.py --workdir runs/paper_cifar10_one_class_cnn/fn norm=fn

The same table row with ResNet-18 (CIFAR style), the same config with model=resnet18:

    fedln-jax run --config experiments/configs/paper_cifar10_one_class_cnn.py --workdir runs/paper_cifar10_one_class_resnet18/none norm=none model=resnet18
    fedln-jax run --config experiments/configs/paper_cifar10_one_class_cnn.py --workdir runs/paper_cifar10_one_class_resnet18/bn norm=bn model=resnet18
    fedln-jax run --config experiments/configs/paper_cifar10_one_class_cnn.py --workdir runs/paper_cifar10_one_class_resnet18/gn norm=gn model=resnet18
    fedln-jax run --config experiments/configs/paper_cifar10_one_class_cnn.py --workdir runs/paper_cifar10_one_class_resnet18/ln norm=ln model=resnet18
    fedln-jax run --config experiments/configs/paper_cifar10_one_class_cnn.py --workdir runs/paper_cifar10_one_class_resnet18/fn norm=fn model=resnet18

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
        dataset="cifar10",
        partition="n_class",
        classes_per_client=1,
        num_clients=10,
    )
