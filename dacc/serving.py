"""How the app is served: the gunicorn options of the README, the Dockerfile and compose."""

GUNICORN_OPTIONS = ("--worker-class", "gthread", "--workers", "2", "--threads", "4")
"""Everything after `gunicorn --bind ADDRESS` but the app, as the README writes it."""
