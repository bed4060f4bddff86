"""Background servers of `make viewer` and `make serve-kserve`: started in their own session with a
pid file and a log under logs/, waited for until a URL answers, stopped by `make stop`."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from scripts import REPO

LOG_DIR = REPO / "logs"


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Return once ``url`` answers 200; ``RuntimeError`` (naming the log) if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited (code {process.returncode}): is the port taken? see {log}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:g} s; see {log}")


def start(command: list[str], pid_file: Path, ready_url: str, timeout: float = 10.0) -> None:
    """Run ``command`` in the background (its own session; output in <pid file stem>.log beside the
    pid file) after stopping any earlier one, and wait until ``ready_url`` answers."""
    stop(pid_file)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    log = pid_file.with_suffix(".log")
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    pid_file.write_text(str(process.pid))
    try:
        wait_until_up(ready_url, process, log, timeout)
    except RuntimeError:
        stop(pid_file)
        raise


def run_action(
    action: str, what: str, start_: Callable[[], str], stop_: Callable[[], bool], started: Callable[[str], str], logger: logging.Logger
) -> int:
    """A background server's `start` / `stop` command line: the exit status, the outcome logged.

    ``start_`` returns the URL (``started`` turns it into the log line); ``stop_`` says whether one ran.
    """
    if action == "stop":
        logger.info("%s stopped" if stop_() else "no %s running", what)
        return 0
    try:
        url = start_()
    except (FileNotFoundError, RuntimeError) as e:
        logger.error("%s", e)
        return 1
    logger.info("%s", started(url))
    return 0


def stop(pid_file: Path) -> bool:
    """Stop the process group the pid file names; True if there was one to stop."""
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return False
    pid_file.unlink(missing_ok=True)
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True
