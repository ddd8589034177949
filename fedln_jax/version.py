"""The package version, in a module of its own so that modules writing it (checkpoints) need
not import the package root (which imports train)."""
__version__ = "0.1.0"
