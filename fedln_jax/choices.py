"""Names the CLI offers as choices, kept free of JAX so that `fedln-jax --help` and every usage
error answer without importing it (docs/config.md#start-up). The modules that own the names
import them from here (models.DTYPES, bench.INPUT_SHAPES and ENGINES); the registries that own
the names of a config key's choices (datasets, partitions, algorithms, models, presets, ...)
define them with their code, and tests/test_cli_startup.py checks that the names here are
theirs, in their order."""

DTYPES = ("float32", "bfloat16")
NORM_PRESET_NAMES = ("none", "bn", "gn", "ln", "fn")
# The models `fedln-jax bench` times, with their synthetic input shapes.
INPUT_SHAPES = {"cnn": (32, 32, 3), "small_cnn": (8, 8, 1), "mlp": (8, 8, 1)}
ENGINES = ("vectorized", "loop")
# The choices of config keys (fedln_jax/config_keys.py), by their owners:
DATASET_NAMES = ("digits", "synthetic", "mnist5k", "cifar10", "cifar100", "tinyimagenet",
                 "pacs")                                           # data.sources.DATASETS
PARTITION_NAMES = ("iid", "n_class", "dirichlet")                  # data.partition.SCHEMES
AUGMENT_SETTINGS = ("auto", "true", "false", "none", "crop_flip", "resized_crop")  # data.augment
MODEL_NAMES = ("cnn", "small_cnn", "mlp", "resnet18", "resnet18_tiny")   # models.MODEL_NAMES
NORM_POSITIONS = ("after", "before")                               # models.NORM_POSITIONS
INITS = ("torch", "lecun")                                         # models.layers.INITS
CONV_IMPLS = ("auto", "patches", "lax", "torch", "torch_large")                   # models.layers.CONV_IMPLS
ALGORITHM_NAMES = ("fedavg", "fedprox", "scaffold", "fedavgm", "fedadam", "fedyogi", "fedlc",
                   "fedrs", "feddecorr", "fedbn")                  # algorithms.REGISTRY
