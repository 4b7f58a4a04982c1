"""Search spaces, budgets and engines over per-unit sparsity levels (no torch here)."""

from search.errors import SparsearchError
from search.space import Genome, Ladder, Level, SearchSpace, Unit

__all__ = ["Genome", "Ladder", "Level", "SearchSpace", "SparsearchError", "Unit"]
