"""Names the CLI offers as choices, kept free of JAX so that `fedln-jax --help` and every usage
error answer without importing it (docs/config.md#start-up). The modules that own the names
import them from here (models.DTYPES, bench.INPUT_SHAPES and ENGINES); the normalizer presets
are defined with their code in models/normalizers.py, and tests/test_cli_startup.py checks
that NORM_PRESET_NAMES lists the same names."""

DTYPES = ("float32", "bfloat16")
NORM_PRESET_NAMES = ("none", "bn", "gn", "ln", "fn")
# The models `fedln-jax bench` times, with their synthetic input shapes.
INPUT_SHAPES = {"cnn": (32, 32, 3), "small_cnn": (8, 8, 1), "mlp": (8, 8, 1)}
ENGINES = ("vectorized", "loop")
