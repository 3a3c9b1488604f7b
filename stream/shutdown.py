"""The stop's last resort: a SIGTERM is obeyed within a bound even if the loop never gets to it.

The loop serves a stop request between calls (stream/runner.py), and every wait in it is sliced
and bounded by processing.shutdown_timeout_s. But a Python signal handler runs only when the main
thread is back in Python: a call into a C library that never returns keeps it from running at all
(librdkafka's send_offsets_to_transaction did, with the group coordinator down:
confluentinc/librdkafka#5456). A process that ignores SIGTERM is killed by the orchestrator
later, with no word of why.

So the interpreter's own C-level handler also writes the signal's number to a socket the moment
the signal arrives (signal.set_wakeup_fd), a daemon thread reads it, and if the process is still
there `bound_s` later it logs why, dumps every thread's stack (where it was stuck), and exits with
code 3. Nothing is lost: what was not committed is redone by the next run, as after a SIGKILL
(at-least-once: its offsets were not committed; exactly-once: the open transaction is aborted
when the next producer with the same transactional id fences it).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import socket
import sys
import threading
import time

log = logging.getLogger(__name__)

#: a stop that runs its course exits within shutdown_timeout_s and a moment to close the clients
GRACE_S = 2.0
_STOPS = {int(signal.SIGTERM), int(signal.SIGINT)}


class StopGuard:
    def __init__(self, bound_s: float) -> None:
        self.bound_s = bound_s
        self._wake: socket.socket | None = None

    def install(self) -> None:
        """Call from the main thread, after the Python handlers for SIGTERM/SIGINT are set
        (the wake-up byte is written only for signals that have one)."""
        reader, self._wake = socket.socketpair()
        self._wake.setblocking(False)
        signal.set_wakeup_fd(self._wake.fileno(), warn_on_full_buffer=False)
        threading.Thread(
            target=self._watch, args=(reader,), name="tickcast-stop-guard", daemon=True
        ).start()

    def _watch(self, reader: socket.socket) -> None:
        while not any(signum in _STOPS for signum in reader.recv(64)):
            pass  # SIGHUP (a reload) and the like
        time.sleep(self.bound_s)
        # Even if writing the reasons blocks (a full pipe, a lock the stuck thread holds).
        last = threading.Timer(1.0, os._exit, args=(3,))
        last.daemon = True
        last.start()
        log.error(
            "stop not finished %.1f s after the signal: exiting with code 3 (what was not "
            "committed is redone by the next run); where each thread was:",
            self.bound_s,
        )
        try:
            sys.stderr.flush()
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            sys.stderr.flush()
        finally:
            os._exit(3)
