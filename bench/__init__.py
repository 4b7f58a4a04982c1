"""Benchmarks: scripts that print JSON, run from the repository root as ``python -m bench.NAME``
(see docs/benchmarks.md for their results). They use the installed ``sparsearch`` package; two
use their neighbours (``train_aware_smollm2`` runs ``heal_smollm2``'s rows, ``ray_pool`` builds
``tests.helpers.tiny``'s random models), so they run only as modules."""
