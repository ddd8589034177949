"""`fedln-jax bench`: how fast a round runs, against a PyTorch loop. Only the CLI imports it
(docs/architecture.md#layers)."""
