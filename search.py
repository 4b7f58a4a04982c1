import sys
from launch.cli import main
raise SystemExit(main(["run", *sys.argv[1:]]))
