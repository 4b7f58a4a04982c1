"""``python search.py [flags]`` is ``sparsearch run [flags]``; it works from any directory (``ray submit`` copies it alone)."""
import sys

from sparsearch.launch.cli import main

raise SystemExit(main(["run", *sys.argv[1:]]))
