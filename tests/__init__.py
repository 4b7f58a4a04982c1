"""The test suite, a package so that its helpers import by name (``tests.helpers``) and
``python -m tests.helpers.kill_target`` runs from the repository root.

``tests/unit/`` is the fast tier: pure tests that never import torch. The other files here
need torch (tiny random models), subprocesses or the real model (``-m slow``)."""
