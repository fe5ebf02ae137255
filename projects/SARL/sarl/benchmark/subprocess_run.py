"""Run a command as a measured subprocess: its exit code, wall time and peak memory, its log's last lines."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any, Dict, Optional, Sequence

__all__ = ["run_measured", "log_tail"]


def run_measured(cmd: Sequence[str], env: Dict[str, str], log_path: str, timeout_s: float,
                 cwd: Optional[str] = None) -> Dict[str, Any]:
    """Run ``cmd`` with stdout+stderr to ``log_path``; its exit code, wall time and peak RSS (``wait4``: the
    process and the descendants it waited for). Killed (its process group) past ``timeout_s``."""
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    with open(log_path, "w") as out:
        proc = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)
        timed_out = False
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() - start > timeout_s and not timed_out:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)
                time.sleep(0.5)
        except BaseException:  # interrupted: do not leave the child (its own session) running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - start, "timed_out": timed_out,
            "peak_rss_mib": usage.ru_maxrss / 1024.0, "load_avg_1min": [load_before, os.getloadavg()[0]]}


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
