"""Character-level language modelling with a certified-Lipschitz transformer."""
