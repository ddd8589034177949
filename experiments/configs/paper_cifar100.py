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


def get_config():
    return dict(
        dataset="cifar100",
        partition="n_class",
        classes_per_client=2,
        num_clients=50,
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
