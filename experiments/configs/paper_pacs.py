"""PACS (7 classes, 4 domains), 12 clients x 1 class, paper CNN on 64x64 inputs.

The paper uses 12 clients; it groups clients by domain, which our partitions do not
model: here the 4 domains are pooled and split 80/20 per class (pacs_domain=""); set
pacs_domain=sketch (or photo, art_painting, cartoon) to test on a held-out domain.
Needs the PACS images as data_dir/<domain>/<class>/<image> (e.g. PACS/kfold).

One config for the five normalizers of this table row; pick the normalizer on the command line:

    fedln-jax run --config experiments/configs/paper_pacs.py --workdir runs/paper_pacs/none norm=none
    fedln-jax run --config experiments/configs/paper_pacs.py --workdir runs/paper_pacs/bn norm=bn
    fedln-jax run --config experiments/configs/paper_pacs.py --workdir runs/paper_pacs/gn norm=gn
    fedln-jax run --config experiments/configs/paper_pacs.py --workdir runs/paper_pacs/ln norm=ln
    fedln-jax run --config experiments/configs/paper_pacs.py --workdir runs/paper_pacs/fn norm=fn

Augmentation: random resized crop (area 0.08-1, ratio 3/4-4/3) + horizontal flip (augment=auto).
Pixels in [0, 1], no mean/std normalization.
Re-running a command on its workdir resumes from the latest checkpoint (every 500 rounds).
"""
from fedln_jax.config import paper_protocol


def get_config():
    # The paper's protocol (docs/method.md#protocol, fedln_jax.config.PAPER_PROTOCOL) plus this table row's setting.
    return paper_protocol(
        dataset="pacs",
        data_dir="data",
        pacs_domain="",
        partition="n_class",
        classes_per_client=1,
        num_clients=12,
    )
