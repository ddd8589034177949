"""TinyImageNet, 200 clients x 1 class (500 images each), paper CNN on 64x64 inputs.

Needs the tiny-imagenet-200 folder (http://cs231n.stanford.edu/tiny-imagenet-200.zip,
unzipped) under data_dir; the official val split is the test set.

One config for the five normalizers of this table row; pick the normalizer on the command line:

    fedln-jax run --config experiments/configs/paper_tinyimagenet.py --workdir runs/paper_tinyimagenet/none norm=none
    fedln-jax run --config experiments/configs/paper_tinyimagenet.py --workdir runs/paper_tinyimagenet/bn norm=bn
    fedln-jax run --config experiments/configs/paper_tinyimagenet.py --workdir runs/paper_tinyimagenet/gn norm=gn
    fedln-jax run --config experiments/configs/paper_tinyimagenet.py --workdir runs/paper_tinyimagenet/ln norm=ln
    fedln-jax run --config experiments/configs/paper_tinyimagenet.py --workdir runs/paper_tinyimagenet/fn norm=fn

Augmentation: random crop 64 with padding 8 + horizontal flip (augment=auto).
Pixels in [0, 1], no mean/std normalization.
Re-running a command on its workdir resumes from the latest checkpoint (every 500 rounds).
"""


def get_config():
    return dict(
        dataset="tinyimagenet",
        data_dir="data",
        partition="n_class",
        classes_per_client=1,
        num_clients=200,
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
