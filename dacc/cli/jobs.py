"""Admin commands for jobs (being built)."""

COMMANDS: list = []
