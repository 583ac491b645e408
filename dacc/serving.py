"""How the app is served: a gunicorn worker that slow or idle clients cannot starve.

`gunicorn -k dacc.serving.Worker` (the options are GUNICORN_OPTIONS). The worker is
gunicorn's gevent worker WITHOUT monkey patching: connections are greenlets (idle or
slow ones cost a few KiB, not a thread), and each request is read whole, head and
body, by its greenlet within deadlines; only then does the app run, in a real thread
of a pool of `--threads`. So the app keeps plain threads and a blocking driver
(psycopg2, COPY, per-process background threads all work as under gthread), and a
thread is never held by a client that sends slowly.

- Head deadline: the request line and headers within `--keep-alive` seconds (gevent
  worker's own rule), also for the first request of a connection; then closed.
- Body deadline: BODY_SECONDS, else 408. Body limits per path (413 as soon as passed).
- At most MAX_CONNECTIONS_PER_ADDRESS open connections per client address and worker:
  more get 503 at once.
- gunicorn's own refusals (400 bad request line or header, 414, 431, ...) are JSON.
"""

from __future__ import annotations

import collections
import io
import json
import logging

SERVE_OPTIONS = (
    "--no-control-socket",
    "--worker-class", "dacc.serving.Worker",
    "--threads", "8",
    "--keep-alive", "5",
)  # fmt: skip
"""The serving options of the README's command and the image's (scripts/docker-web.sh),
which adds its own --workers; chosen by measurement (README, "Serving")."""
GUNICORN_OPTIONS = (*SERVE_OPTIONS, "--workers", "2")
"""Everything after `gunicorn --bind ADDRESS` but the app, as the README writes it."""

BODY_SECONDS = 10.0
"""A body must arrive whole within this (a 16 MiB body at 2 MB/s takes 8 s)."""
MAX_CONNECTIONS_PER_ADDRESS = 100
SMALL_BODY_PATHS = ("/measure", "/aggregate")
"""Paths whose bodies are small (64 KiB); every other path may take 16 MiB (bulk)."""

log = logging.getLogger(__name__)

try:  # gevent is only needed to serve, not to import the app (tests, CLI)
    import gevent
    from gevent import socket as gsocket
    from gevent.threadpool import ThreadPool
    from gunicorn import util as gunicorn_util
    from gunicorn.workers.ggevent import GeventWorker
except ImportError:  # pragma: no cover
    GeventWorker = object


def _body_limit(path: str) -> int:
    from dacc import MAX_BODY_BYTES
    from dacc.api.measures import MEASURE_MAX_BYTES

    return MEASURE_MAX_BYTES if path in SMALL_BODY_PATHS else MAX_BODY_BYTES


def _json_response(start_response, status: str, message: str, headers=()):
    body = json.dumps({"error": message}).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *headers,
        ],
    )
    return [body]


class _TooLarge(Exception):
    pass


class BufferedThreadedApp:
    """WSGI wrapper: read the whole body in the connection's greenlet, then run the app
    in a real thread and hand its response back to the greenlet to send."""

    def __init__(self, app, threads: int):
        self.app = app
        self.pool = ThreadPool(threads)

    def __call__(self, environ, start_response):
        from dacc.api.body import too_large

        limit = _body_limit(environ.get("PATH_INFO", ""))
        try:
            with gevent.Timeout(BODY_SECONDS):
                body = self._read_body(environ, limit)
        except gevent.Timeout:
            return _json_response(
                start_response, "408 Request Timeout", f"body: not received within {BODY_SECONDS:g} s"
            )
        except _TooLarge:
            return _json_response(start_response, "413 Content Too Large", too_large(limit).message)
        except Exception:  # the chunk parser, a reset connection
            return _json_response(
                start_response, "400 Bad Request", "body: malformed chunked encoding or incomplete body"
            )
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        reply: list = []

        def run():
            chunks: list[bytes] = []

            def begin(status, headers, exc_info=None):
                reply[:] = [status, headers]
                return chunks.append

            result = self.app(environ, begin)
            try:
                chunks.extend(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            return chunks

        chunks = self.pool.apply(run)
        start_response(*reply)
        return chunks

    @staticmethod
    def _read_body(environ, limit: int) -> bytes:
        stream = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH")
        if length:
            if int(length) > limit:
                raise _TooLarge()
            return stream.read(int(length))
        if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return b""
        parts, size = [], 0
        while part := stream.read(65536):
            size += len(part)
            if size > limit:
                raise _TooLarge()
            parts.append(part)
        return b"".join(parts)


def _write_json_error(sock, status_int, reason, mesg):
    """gunicorn's own refusals (bad request line, headers too large...) as JSON."""
    body = json.dumps({"error": f"{reason}: {mesg}" if mesg else reason}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin1")
    gunicorn_util.write_nonblock(sock, head + body)


class Worker(GeventWorker):
    """gunicorn's gevent worker, without monkey patching, running the app in threads."""

    def patch(self):
        # No monkey.patch_all(): the app keeps real threads and blocking sockets. Only
        # the listening sockets become gevent's, so connections are greenlets.
        self.sockets = [
            gsocket.socket(s.FAMILY, gsocket.SOCK_STREAM, fileno=s.sock.detach()) for s in self.sockets
        ]

    def init_process(self):
        self.connections_per_address = collections.Counter()
        gunicorn_util.write_error = _write_json_error
        super().init_process()

    def load_wsgi(self):
        super().load_wsgi()
        self.wsgi = BufferedThreadedApp(self.wsgi, max(1, self.cfg.threads))

    def handle(self, listener, client, addr):
        address = addr[0] if isinstance(addr, tuple) else ""
        if self.connections_per_address[address] >= MAX_CONNECTIONS_PER_ADDRESS:
            _refuse(client, "too many connections from this address")
            return
        self.connections_per_address[address] += 1
        try:
            super().handle(listener, client, addr)
        finally:
            self.connections_per_address[address] -= 1
            if not self.connections_per_address[address]:
                del self.connections_per_address[address]


def _refuse(client, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    try:
        client.sendall(
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"Retry-After: 5\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
    except OSError:
        pass
    finally:
        client.close()
