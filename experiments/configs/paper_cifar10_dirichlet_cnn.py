"""CIFAR-10, Dirichlet(0.1) label skew over 10 clients, paper CNN.

One config for the five normalizers of this table row; pick the normalizer on the command line:

    fedln-jax run --config experiments/configs/paper_cifar10_dirichlet_cnn.py --workdir runs/paper_cifar10_dirichlet_cnn/none norm=none
    fedln-jax run --config experiments/configs/paper_cifar10_dirichlet_cnn.py --workdir runs/paper_cifar10_dirichlet_cnn/bn norm=bn
    fedln-jax run --config experiments/configs/paper_cifar10_dirichlet_cnn.py --workdir runs/paper_cifar10_dirichlet_cnn/gn norm=gn
    fedln-jax run --config experiments/configs/paper_cifar10_dirichlet_cnn.py --workdir runs/paper_cifar10_dirichlet_cnn/ln norm=ln
    fedln-jax run --config experiments/configs/paper_cifar10_dirichlet_cnn.py --workdir runs/paper_cifar10_dirichlet_cnn/fn norm=fn

The same table row with ResNet-18 (CIFAR style), the same config with model=resnet18:

    fedln-jax run --config experiments/configs/paper_cifar10_dirichlet_cnn.py --workdir runs/paper_cifar10_dirichlet_resnet18/none norm=none model=resnet18
    fedln-jax run --config experiments/configs/paper_cifar10_dirichlet_cnn.py --workdir runs/paper_cifar10_dirichlet_resnet18/bn norm=bn model=resnet18
    fedln-jax run --config experiments/configs/paper_cifar10_dirichlet_cnn.py --workdir runs/paper_cifar10_dirichlet_resnet18/gn norm=gn model=resnet18
    fedln-jax run --config experiments/configs/paper_cifar10_dirichlet_cnn.py --workdir runs/paper_cifar10_dirichlet_resnet18/ln norm=ln model=resnet18
    fedln-jax run --config experiments/configs/paper_cifar10_dirichlet_cnn.py --workdir runs/paper_cifar10_dirichlet_resnet18/fn norm=fn model=resnet18

Augmentation: random crop 32 with padding 4 + horizontal flip (augment=auto).
Pixels in [0, 1], no mean/std normalization.

CIFAR comes through TFDS: with data_dir empty it is read from ~/tensorflow_datasets (or
$TFDS_DATA_DIR), and downloaded there once when TensorFlow is installed.
Re-running a command on its workdir resumes from the latest checkpoint (every 500 rounds).
"""


def get_config():
    return dict(
        dataset="cifar10",
        partition="dirichlet",
        dirichlet_beta=0.1,
        num_clients=10,
        model="cnn",
        norm="none",
        # SPEC section 4: full participation, 10 local SGD steps of batch 32, lr 0.01, no momentum
        # or weight decay, FedAvg of the whole model state weighted by client size, up to 10,000
        # rounds, evaluation every 100 (global model on each client's test classes, mean over clients).
        local_steps=10,
        batch_size=32,
        lr=0.01,
        momentum=0.0,
        weight_decay=0.0,
        algorithm="fedavg",
        rounds=10000,
        eval_every=100,
        checkpoint_every=500,
        seed=0,
    )
