"""Small pieces every other package shares, with no heavy imports: errors and exit codes, device choice, paths."""
