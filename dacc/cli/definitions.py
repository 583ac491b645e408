"""Admin commands for definitions (being built)."""

COMMANDS: list = []
