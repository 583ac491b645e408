"""Watch the whole test run for secrets in logs: every token secret the tests create,
the contributor secret, and every contributor pseudonym sent, against every log record
(any logger, any handler, propagating or not) and the served processes' output.

Installed once per session by tests/conftest.py; each test fails (at teardown) when a
record or output line emitted during it holds one. Cheap: a secret is found by its
shape (runs of URL-safe characters, looked up by window in a set), a pseudonym by
substring among the few sent.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading

WINDOW = 16
"""A token secret is `dacc_` and 43 URL-safe characters: any 16 of them in a row found
in a log are a leak (the listings' display prefix shows 7, by design)."""
_URLSAFE_RUN = re.compile(rf"[A-Za-z0-9_-]{{{WINDOW},}}")
MIN_PSEUDONYM = 8
"""Shorter pseudonyms ("alice", "c1") may appear in a log for other reasons; a longer one
with a few distinct characters does not by chance (within its test: see
forget_pseudonyms)."""
_FORMATTER = logging.Formatter()


class SecretWatch:
    def __init__(self):
        self.lock = threading.Lock()
        self.windows: set[str] = set()
        self.pseudonyms: set[str] = set()
        self.found: list[str] = []
        self.outputs: dict[str, int] = {}
        """Files of served processes' output -> how far they were read."""

    # --- what to look for ---------------------------------------------------------

    def add_secret(self, secret: str) -> None:
        with self.lock:
            self.windows.update(secret[i : i + WINDOW] for i in range(len(secret) - WINDOW + 1))

    def add_pseudonym(self, pseudonym) -> None:
        if isinstance(pseudonym, str) and len(pseudonym) >= MIN_PSEUDONYM and len(set(pseudonym)) >= 4:
            with self.lock:
                self.pseudonyms.add(pseudonym)

    # --- where to look --------------------------------------------------------------

    def check_text(self, text: str, where: str) -> None:
        fault = self._fault(text)
        if fault:
            with self.lock:
                self.found.append(f"{where}: {fault}")

    def check_record(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: logging reports it itself
            return
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            text = f"{text}\n{record.exc_text}"
        if record.stack_info:
            text = f"{text}\n{record.stack_info}"
        self.check_text(text, f"log record {record.name} {record.levelname}")

    def watch_output(self, path) -> None:
        """Scan the file `path` (a served process's output) at each check, from where
        the previous check stopped."""
        self.outputs.setdefault(str(path), 0)

    def _scan_outputs(self) -> None:
        for path, offset in list(self.outputs.items()):
            try:
                with open(path, "rb") as file:
                    file.seek(offset)
                    data = file.read()
            except FileNotFoundError:
                continue
            # Stop at the last full line: a line being written is read whole next time.
            end = data.rfind(b"\n") + 1
            self.outputs[path] = offset + end
            self.check_text(data[:end].decode("utf-8", "replace"), f"output of {path}")

    def _fault(self, text: str) -> str | None:
        windows = self.windows
        for match in _URLSAFE_RUN.finditer(text):
            run = match.group()
            for i in range(len(run) - WINDOW + 1):
                if run[i : i + WINDOW] in windows:
                    return "a token secret: " + _redacted(text, match.start() + i)
        for pseudonym in self.pseudonyms:
            at = text.find(pseudonym)
            if at >= 0:
                return "a contributor pseudonym: " + _redacted(text, at)
        return None

    def forget_pseudonyms(self) -> None:
        """At a test's end: tests reuse readable strings (a pseudonym of one test may be
        another's measure name), so a pseudonym is watched for during its test only."""
        with self.lock:
            self.pseudonyms.clear()

    def take_found(self) -> list[str]:
        self._scan_outputs()
        with self.lock:
            found, self.found = self.found, []
        return found


def _redacted(text: str, at: int) -> str:
    """The line around a leak, the leak itself masked."""
    start = text.rfind("\n", 0, at) + 1
    end = text.find("\n", at)
    line = text[start : end if end >= 0 else len(text)]
    cut = at - start
    return (line[:cut] + "<SECRET>" + line[cut + WINDOW :])[:300]


@contextlib.contextmanager
def watching(monkeypatch):
    """Install the watch: wrap where secrets and pseudonyms are made, and see every
    record handled by any logger."""
    import dacc.ingestion
    import dacc.tokens

    watch = SecretWatch()
    new_secret = dacc.tokens._new_secret
    hash_contributor = dacc.ingestion.hash_contributor
    handle = logging.Logger.handle

    def watched_new_secret():
        secret = new_secret()
        watch.add_secret(secret)
        return secret

    def watched_hash_contributor(key, org, pseudonym):
        digest = hash_contributor(key, org, pseudonym)  # raises for an invalid one
        watch.add_pseudonym(pseudonym)
        return digest

    def watched_handle(self, record):
        # Logger.handle runs once per record, on the logger that made it, before
        # filters and propagation: what any handler (or none) would get.
        watch.check_record(record)
        return handle(self, record)

    monkeypatch.setattr(dacc.tokens, "_new_secret", watched_new_secret)
    monkeypatch.setattr(dacc.ingestion, "hash_contributor", watched_hash_contributor)
    monkeypatch.setattr(logging.Logger, "handle", watched_handle)
    yield watch
