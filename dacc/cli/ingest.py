"""`flask ingest ...`: the MQTT worker and the messages it set aside."""

import signal
import threading
from datetime import UTC, datetime

import click
from flask import current_app
from flask.cli import AppGroup

from dacc import mqtt
from dacc.cli.errors import cli_errors
from dacc.cli.table import echo_table, escape_unprintable

ingest_group = AppGroup("ingest", help="Ingestion from a message broker.")

PREVIEW_CHARS = 60


@ingest_group.command("mqtt")
@cli_errors
def mqtt_command():
    """Store the measures published on the `mqtt` section's subscriptions, until
    SIGTERM or SIGINT: then flush the current batch, acknowledge it and exit 0.

    Progress goes to the log every 10 s; bad messages go to `flask ingest rejected`.
    """
    config = current_app.config["DACC"].mqtt
    if config is None:
        raise click.ClickException("no 'mqtt' section in the configuration (see config-template.yml)")
    stop = threading.Event()

    def request_stop(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    counters = mqtt.run_worker(config, stop=stop)
    click.echo(
        f"stopped: {counters.received} message(s) received, {counters.stored} measure(s) stored"
        f" ({counters.duplicates} duplicates), {counters.rejected} message(s) rejected"
    )


@ingest_group.command("rejected")
@click.option("--topic", help="Only this topic (or, ending in '/#', this topic and those below).")
@click.option(
    "--since", metavar="DATE", help="Only messages received since DATE (ISO 8601; UTC if no offset)."
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Newest first, at most this many.",
)
@cli_errors
def rejected_command(topic, since, limit):
    """List the MQTT messages set aside by `flask ingest mqtt`, newest first."""
    rows = mqtt.list_rejected_messages(topic=topic, since=_since(since), limit=limit)
    echo_table(
        ("received", "topic", "org", "error", "bytes", "payload"),
        [
            (
                r.received_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                r.topic,
                r.org,
                r.error,
                str(r.payload_size),
                _preview(r.payload),
            )
            for r in rows
        ],
    )
    click.echo(f"{len(rows)} rejected message(s)" + (f" (the newest {limit})" if len(rows) == limit else ""))


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"expected an ISO 8601 date or date-time, got {value!r}", param_hint="--since"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _preview(payload: bytes) -> str:
    """The payload's start on one line, non-printable characters escaped."""
    shown = escape_unprintable(payload.decode("utf-8", "replace"))
    return shown if len(shown) <= PREVIEW_CHARS else shown[:PREVIEW_CHARS] + "…"


COMMANDS = [ingest_group]
