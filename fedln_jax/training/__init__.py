"""A run's life: a Config turned into an experiment and a compiled program, the training loop,
checkpoints, workdir files and locks, memory plans (docs/architecture.md#layers)."""
