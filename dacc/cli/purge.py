"""Admin commands for purge (being built)."""

COMMANDS: list = []
