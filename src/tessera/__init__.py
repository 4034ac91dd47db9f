"""Tessera: federated training on data that never leaves its owners."""

__version__ = "0.1.0"

__all__ = ["__version__"]
