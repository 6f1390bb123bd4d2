"""sr2: Search-R2 (Actor + Meta-Refiner RL for search agents) in JAX/Flax."""

__version__ = "0.1.0"
