"""Where DACC's log records go (stderr or syslog), and the per-request log line."""

from __future__ import annotations

import logging
import logging.handlers
import time

from flask import Flask, request

from dacc.config import Config

log = logging.getLogger(__name__)
request_log = logging.getLogger("dacc.request")

NOTICE = 25
"""Syslog's `notice`, between INFO and WARNING (Python has no such level)."""
logging.addLevelName(NOTICE, "NOTICE")

_HANDLER_MARK = "_dacc_handler"
REQUEST_START_KEY = "dacc.request_start"
"""environ key: time.perf_counter() when the app began the request (logs and metrics)."""
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_SYSLOG_FORMAT = "dacc[%(process)d]: %(levelname)s %(name)s: %(message)s"


def configure_logging(config: Config) -> None:
    """Send the `dacc` loggers' records at or above `log_level` to syslog or stderr.

    Called by every create_app: the handler of a previous call is replaced, not added.
    """
    logger = logging.getLogger("dacc")
    for handler in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
        logger.removeHandler(handler)
        handler.close()
    if not config.logging_enable:
        logger.setLevel(logging.CRITICAL + 1)
        return
    logger.setLevel(logging.getLevelName(config.log_level))
    if config.log_to_syslog:
        handler = _syslog_handler(config.syslog_address)
        # Syslog is the destination: the records do not also go to the root's handlers.
        logger.propagate = False
    elif logging.getLogger().handlers:
        logger.propagate = True  # someone (pytest, --log-config) already chose where
        return
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        # Not through the root either: alembic's fileConfig gives the root a console
        # handler when the embedded database is migrated, and every line would be
        # written twice.
        logger.propagate = False
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)


def _syslog_handler(address: str) -> logging.Handler:
    if address.startswith("/"):
        target: str | tuple[str, int] = address
    else:
        host, _, port = address.rpartition(":")
        target = (host, int(port))
    try:
        handler = logging.handlers.SysLogHandler(address=target)
    except OSError as exc:
        from dacc.config import ConfigError

        raise ConfigError(f"logging.syslog_address: cannot open {address}: {exc.strerror}") from None
    handler.priority_map = {**handler.priority_map, "NOTICE": "notice"}
    handler.setFormatter(logging.Formatter(_SYSLOG_FORMAT))
    return handler


def register_request_log(app: Flask) -> None:
    """One info line per request: method, path, status, duration, token id and org.

    Never the Authorization header, the query string or the body (tokens, values).
    """

    @app.before_request
    def _start_clock():
        request.environ[REQUEST_START_KEY] = time.perf_counter()

    @app.after_request
    def _log_request(response):
        if request_log.isEnabledFor(logging.INFO):
            token_id, org = request_token()
            started = request.environ.get(REQUEST_START_KEY)
            ms = (time.perf_counter() - started) * 1000 if started else 0.0
            request_log.info(
                "%s %s %s %.1fms token=%s org=%s",
                request.method,
                printable(request.path),
                response.status_code,
                ms,
                token_id if token_id is not None else "-",
                printable(org) if org is not None else "-",
            )
        return response


def request_token() -> tuple[int | None, str | None]:
    """The id and org of the token this request authenticated with, if any."""
    from dacc.auth import ENVIRON_KEY

    identity = request.environ.get(ENVIRON_KEY)
    return (identity.id, identity.org) if identity is not None else (None, None)


def refused_measures(body, error) -> list[tuple[object, str, int | None]]:
    """(measureName sent, fault, bulk index or None) for each measure `error` refused.

    `error` is the DaccError raised for `body`: one measure, or a bulk array whose
    faults are listed by index in `error.details` (the first 100).
    """
    if isinstance(body, list) and error.details:
        refused = []
        for fault in error.details:
            index = fault["index"]
            item = body[index] if 0 <= index < len(body) else None
            name = item.get("measureName") if isinstance(item, dict) else None
            refused.append((name, fault["error"], index))
        return refused
    name = body.get("measureName") if isinstance(body, dict) else None
    return [(name, error.message, None)]


def log_refused_measures(refused) -> None:
    """One line per refused measure: its name, the fault, the token; never its value."""
    token_id, _ = request_token()
    for name, fault, index in refused:
        if fault.startswith("value: "):
            # The fault about `value` quotes it: keep the fault, not the value.
            fault = fault.split(", got ", 1)[0]
        request_log.info(
            "measure refused: measure=%s error=%s%s token=%s",
            printable(name) if isinstance(name, str) else "-",
            f"[{index}] " if index is not None else "",
            printable(fault),
            token_id if token_id is not None else "-",
        )


def printable(text: str, limit: int = 200) -> str:
    """Client text made safe for a log line: control characters escaped, cut at `limit`."""
    cut = text[:limit]
    if cut.isprintable():
        return cut
    return cut.encode("unicode_escape").decode("ascii")
