"""The stop's last resort (stream/shutdown.py): a process whose main thread never comes back from
a C call still exits after SIGTERM, with code 3 and every thread's stack in its log."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

#: The child: tickcast's signal handling as `tickcast run` installs it, then a main thread stuck
#: in a C call that a signal does not end (SIGTERM blocked in that thread, so the signal is
#: delivered to another one and the C call goes on), as librdkafka's send_offsets_to_transaction
#: was with the coordinator down.
CHILD = textwrap.dedent(
    """
    import ctypes, logging, signal, sys
    from stream.commands.run import _on_signals
    from stream.shutdown import StopGuard

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    stopped = []
    _on_signals(lambda: stopped.append(1), lambda: None)
    if {guarded}:
        StopGuard({bound}).install()
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGHUP])  # this thread only
    print("stuck", flush=True)
    ctypes.CDLL(None).sleep(60)
    print("came back", stopped, flush=True)
    """
)


def run_child(
    bound_s: float, sig: signal.Signals, *, guarded: bool = True, wait_s: float = 30.0
) -> tuple[int | None, str]:
    """The child's exit code (None: still running after `wait_s`, then killed) and output."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(bound=bound_s, guarded=guarded)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "stuck"
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=wait_s)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return None, out


def test_sigterm_exits_with_3_when_the_main_thread_never_returns() -> None:
    code, out = run_child(0.5, signal.SIGTERM)
    assert code == 3, out
    assert "stop not finished 0.5 s after the signal: exiting with code 3" in out
    assert "MainThread" in out or "Current thread" in out  # faulthandler's stack dump
    assert "came back" not in out


def test_without_the_guard_such_a_process_ignores_sigterm() -> None:
    # The failure the guard is for: the Python handler never runs, the process stays.
    code, out = run_child(0.5, signal.SIGTERM, guarded=False, wait_s=3.0)
    assert code is None, out


def test_sighup_is_not_a_stop() -> None:
    code, out = run_child(0.2, signal.SIGHUP, wait_s=2.0)
    assert code is None, out  # still running: a reload request does not arm the stop's bound
