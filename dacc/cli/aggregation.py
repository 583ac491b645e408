"""Admin commands for aggregation (being built)."""

COMMANDS: list = []
