"""The federated round, free of configuration: state, one client's round, the vectorized round
and its map-reduce, the reference loop, evaluation and measurements, device placement.
Imports nothing above models, algorithms and data (docs/architecture.md#layers)."""
