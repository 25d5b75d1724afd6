"""Structured logs: one line per event, as text or JSON (for log shippers).

A server logs from its event loop, and a write to stderr blocks while whoever reads it
(a pipe, a container runtime, a terminal) does not: ~64 KB of unread log once stalled an
edge-server's every stream and signalling request. ``background=True`` makes logging never
block the caller: records go through a bounded queue to a thread that writes them; when
the queue is full they are dropped and counted, and the count is logged once the writer
catches up.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import queue
import sys
import time

QUEUE_RECORDS = 10_000


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event)


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hands records to a bounded queue and never waits: a full queue drops the record and counts it."""

    def __init__(self, records: queue.Queue) -> None:
        super().__init__(records)
        self.dropped = 0
        self.listener: _Listener | None = None

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _Listener(logging.handlers.QueueListener):
    """The writer thread: formats each record and writes it with ``os.write`` itself.

    A write stuck on a reader that does not read then holds no lock that logging's shutdown
    or the interpreter's (flushing stderr) would wait for, so the process can still exit.
    """

    def __init__(self, records: queue.Queue, front: DroppingQueueHandler, formatter: logging.Formatter,
                 stream) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
        super().__init__(records)
        self.front, self.formatter, self.stream, self.reported = front, formatter, stream, 0

    def handle(self, record: logging.LogRecord) -> None:
        lines = []
        dropped = self.front.dropped
        if dropped > self.reported:
            lines.append(self.formatter.format(logging.LogRecord(
                "splitserve.logs", logging.WARNING, __file__, 0,
                "%d log records dropped: the log's reader was not keeping up", (dropped - self.reported,), None)))
            self.reported = dropped
        lines.append(self.formatter.format(record))
        self._write("\n".join(lines) + "\n")

    def _write(self, text: str) -> None:
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (a test's StringIO): it cannot block
            self.stream.write(text)
            self.stream.flush()
            return
        data = text.encode(errors="replace")
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError:  # the reader is gone: nothing more can be said to it
            pass

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, waiting at most ``timeout`` s for a reader that may never come back."""
        if self._thread is None:
            return
        try:
            self.queue.put(self._sentinel, timeout=timeout)
        except queue.Full:
            return  # the writer is stuck on the reader: the process ends without the rest
        self._thread.join(timeout)
        self._thread = None


def setup_logging(level: str = "info", fmt: str = "text", background: bool = False, stream=None) -> logging.Handler:  # type: ignore[no-untyped-def]
    """Log to ``stream`` (stderr); ``background``: through a queue and a writer thread (see above).

    Returns the handler installed on the root logger.
    """
    stream = stream or sys.stderr
    formatter = (JsonFormatter() if fmt == "json"
                 else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))  # fmt: skip
    handler: logging.Handler
    if background:
        handler = DroppingQueueHandler(queue.Queue(QUEUE_RECORDS))
        handler.listener = _Listener(handler.queue, handler, formatter, stream)
        handler.listener.start()
        atexit.register(handler.listener.stop)  # what is queued is written before the process ends
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    try:
        root.setLevel(level.upper())
    except ValueError:
        raise SystemExit(f"unknown log level {level!r}; use debug, info, warning or error") from None
    return handler
