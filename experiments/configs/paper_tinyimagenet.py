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
from fedln_jax.config import paper_protocol


def get_config():
    # The paper's protocol (docs/method.md#protocol, fedln_jax.config.PAPER_PROTOCOL) plus this table row's setting.
    return paper_protocol(
        dataset="tinyimagenet",
        data_dir="data",
        partition="n_class",
        classes_per_client=1,
        num_clients=200,
    )
