"""Unit tier: pure tests of the search space, budgets, allocations, engines on a synthetic
fitness, run files and option parsing. Nothing here imports torch (checked by test_torch_free)."""
