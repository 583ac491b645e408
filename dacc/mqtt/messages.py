"""MQTT messages: parsed and validated as measures, or set aside with the reason."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime

import sqlalchemy as sa

from dacc.db import db
from dacc.ingestion import MAX_BATCH, validate_batch
from dacc.logs import printable
from dacc.models.messages import PAYLOAD_LIMIT, RejectedMessage

log = logging.getLogger("dacc.mqtt")


@dataclasses.dataclass(slots=True)
class Message:
    """A message received and not yet acknowledged."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    org: str | None
    received_at: datetime
    connection: int
    """The connection it came on: its packet id means nothing on another one."""
    items: list | None = None
    array: bool = False
    """The payload was an array (else one measure object)."""
    error: str | None = None


def prepare_message(message: Message) -> int:
    """Parse the payload (sets items, or error); the number of measures it holds."""
    if message.org is None:
        message.error = "topic: matches no configured subscription"
        return 1
    try:
        body = json.loads(message.payload)
    except UnicodeDecodeError:
        message.error = "payload: not UTF-8 text"
        return 1
    except (ValueError, RecursionError) as exc:
        message.error = f"payload: not valid JSON ({exc})"
        return 1
    if type(body) is not list:
        message.items = [body]
        return 1
    if len(body) > MAX_BATCH:
        message.error = f"payload: at most {MAX_BATCH} measures per message, got {len(body)}"
        return 1
    message.items, message.array = body, True
    return max(1, len(body))


def _validate(messages: list[Message], org: str) -> list:
    """The measures of the messages whose every item is valid; marks the others.

    A message is all or nothing, as a POST /measures body: resent after a fix, it is
    stored once."""
    items = [item for m in messages for item in m.items]
    measures, rejects = validate_batch(items, org=org)
    if not rejects:
        return measures
    owner_of = [owner for owner, m in enumerate(messages) for _ in m.items]
    starts: dict[int, int] = {}
    for index, owner in enumerate(owner_of):
        starts.setdefault(owner, index)
    faults: dict[int, list] = {}
    for reject in rejects:
        faults.setdefault(owner_of[reject.index], []).append(reject)
    for owner, found in faults.items():
        message, first = messages[owner], found[0]
        if not message.array:
            message.error = first.error
        else:
            more = f" (and {len(found) - 1} more invalid item(s))" if len(found) > 1 else ""
            message.error = f"item {first.index - starts[owner]}: {first.error}{more}"
    # The valid items, in order, are the measures; keep those of whole messages.
    rejected_indexes = {r.index for r in rejects}
    valid = (i for i in range(len(items)) if i not in rejected_indexes)
    return [measure for i, measure in zip(valid, measures) if owner_of[i] not in faults]


def validate_messages(messages: list[Message]) -> list:
    """The measures of the messages that are valid as a whole; marks the others."""
    measures = []
    by_org: dict[str, list[Message]] = {}
    for message in messages:
        if message.error is None:
            by_org.setdefault(message.org, []).append(message)
    for org, group in by_org.items():
        measures += _validate(group, org)
    return measures


def log_reject(message: Message) -> None:
    """One line per rejected message: topic, org and fault; never the payload."""
    error = message.error
    if "value: " in error:
        error = error.split(", got ", 1)[0]  # the fault about `value` quotes it
    log.warning("mqtt: message rejected: topic=%s org=%s error=%s", printable(message.topic),
                printable(message.org or "-"), printable(error))  # fmt: skip


def reject_row(message: Message) -> dict:
    return {
        "topic": message.topic,
        "org": message.org or "",
        "received_at": message.received_at,
        "error": message.error,
        "payload": bytes(message.payload[:PAYLOAD_LIMIT]),
        "payload_size": len(message.payload),
    }


def reject_event(message: Message) -> str:
    return json.dumps({
        "topic": message.topic,
        "receivedAt": message.received_at.isoformat(),
        "error": message.error,
        "payload": bytes(message.payload[:PAYLOAD_LIMIT]).decode("utf-8", "replace"),
    })  # fmt: skip


def list_rejected_messages(*, topic: str | None = None, since: datetime | None = None,
                           limit: int = 100) -> list[RejectedMessage]:  # fmt: skip
    """The newest rejected messages first; `topic` is a topic name, or a prefix ending
    in '/#'."""
    query = sa.select(RejectedMessage).order_by(RejectedMessage.received_at.desc(), RejectedMessage.id.desc())
    if topic is not None:
        if topic.endswith("/#"):
            prefix = topic[:-2]
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(sa.or_(RejectedMessage.topic == prefix,
                                       RejectedMessage.topic.like(escaped + "/%", escape="\\")))  # fmt: skip
        else:
            query = query.where(RejectedMessage.topic == topic)
    if since is not None:
        query = query.where(RejectedMessage.received_at >= since)
    rows = db.session.scalars(query.limit(limit)).all()
    db.session.commit()
    return list(rows)
