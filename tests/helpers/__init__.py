"""Helpers shared by tests and benchmarks.

``synthetic``: a search space and a fitness with a known optimum (no torch). ``tiny``: tiny
random decoders and a trained byte-level tokenizer (imports torch). ``kill_target``: a search
in its own process for the kill-and-resume tests (``python -m tests.helpers.kill_target``)."""
