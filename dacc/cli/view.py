"""Admin commands for view (being built)."""

COMMANDS: list = []
