"""Command line, typed run configuration, presets, cluster configs and reporting."""
