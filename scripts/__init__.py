"""Release, version and benchmark helpers (run as scripts or `python -m scripts.NAME`)."""
