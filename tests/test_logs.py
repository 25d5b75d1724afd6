"""Logging in the background: a log reader that stops reading never blocks the code that logs."""

from __future__ import annotations

import json
import logging
import os
import threading

from splitserve.logs import QUEUE_RECORDS, setup_logging


def test_a_reader_that_never_reads_drops_records_instead_of_blocking_the_logger():
    read_end, write_end = os.pipe()  # nobody reads: its buffer (~64 KB) fills after a few hundred lines
    stream = os.fdopen(write_end, "w", buffering=1)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    front = setup_logging("info", background=True, stream=stream)
    log = logging.getLogger("splitserve.test")
    done = threading.Event()

    def burst() -> None:
        for i in range(QUEUE_RECORDS + 20_000):
            log.info("line %d %s", i, "x" * 200)
        done.set()

    try:
        threading.Thread(target=burst, daemon=True).start()
        # a blocking handler would stop the burst at the pipe's fill forever; the queue handler finishes it
        assert done.wait(120), "logging blocked on a reader that does not read"
        assert front.dropped >= 15_000  # what neither the pipe (a few hundred lines) nor the queue could hold
        os.set_blocking(read_end, False)
        text = b""
        while not text.count(b"\n") > 10:  # the reader comes back: the writer thread goes on
            try:
                text += os.read(read_end, 1 << 20)
            except BlockingIOError:
                threading.Event().wait(0.05)
        assert b"line 0 " in text
        for _ in range(400):  # drain until the writer reports what it dropped
            try:
                text += os.read(read_end, 1 << 20)
            except BlockingIOError:
                if b"log records dropped" in text:
                    break
                threading.Event().wait(0.05)
        assert b"log records dropped: the log's reader was not keeping up" in text
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        os.close(read_end)  # the writer's next write fails (EPIPE) instead of waiting
        front.listener.stop()
        stream.close()


def test_without_a_reader_problem_the_background_writes_every_line_in_order():
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    front = setup_logging("info", fmt="json", background=True, stream=stream)
    try:
        for i in range(50):
            logging.getLogger("splitserve.test").info("event %d", i)
        front.listener.stop()  # writes what is queued, then returns
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        stream.close()
    with os.fdopen(read_end) as r:
        lines = r.read().splitlines()
    assert [json.loads(line)["msg"] for line in lines] == [f"event {i}" for i in range(50)]
    assert front.dropped == 0
