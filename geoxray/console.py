"""What a person at the terminal sees during a command: geoxray's own lines, progress bars and
a ticking line while an engine starts; Ray's, Ray Serve's, Ray Data's and vLLM's chatter goes
to the run folder (DIR/logs/ray-vllm.log) instead.

Why at the file-descriptor level: part of the chatter comes from Ray's C++ core worker inside
this process (e.g. the "constructor arguments in the object store" line), which no Python
logging setting reaches. So, inside `session()`, once a run folder is known
(`redirect_chatter`), descriptor 2 is pointed at the log file and geoxray writes to a saved
copy of the terminal's stderr (`stream()`). Outside a session (tests, library use) nothing is
redirected and `stream()` is plain sys.stderr.

Output of Ray workers and Serve replicas (where vLLM runs) never reaches this process
(`log_to_driver=False`); it stays in the Ray session's log folder, which DIR/logs/ray-session
links to for a local cluster.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

LOG_NAME = "ray-vllm.log"
SESSION_LINK = "ray-session"


class _State:
    console: IO[str] | None = None  # the terminal's stderr, saved before redirection
    log_dir: Path | None = None
    handler: logging.Handler | None = None
    pinned: bool = False


_state = _State()


def stream() -> IO[str]:
    """Where geoxray's own lines go: the terminal, also while chatter is redirected."""
    return _state.console or sys.stderr


def say(line: str) -> None:
    print(line, file=stream(), flush=True)


@contextmanager
def session() -> Iterator[None]:
    """One command's console: geoxray's INFO lines shown, chatter redirectable."""
    sys.stderr.flush()
    saved = os.dup(2)
    _state.console = os.fdopen(saved, "w", buffering=1, encoding="utf-8", errors="replace")
    _state.handler = logging.StreamHandler(_state.console)
    _state.handler.setFormatter(logging.Formatter("%(message)s"))
    geoxray_log = logging.getLogger("geoxray")
    geoxray_log.addHandler(_state.handler)
    geoxray_log.setLevel(logging.INFO)
    geoxray_log.propagate = False  # not again through Ray's handlers on the root logger
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the terminal again: a traceback after this is seen
        log_dir = _state.log_dir
        if log_dir is not None:
            _link_ray_session(log_dir)
            if failed:
                print(f"Ray's and vLLM's output: {log_dir}/", file=sys.stderr)
        geoxray_log.removeHandler(_state.handler)
        geoxray_log.propagate = True
        _state.console.close()
        _state.console = _state.handler = _state.log_dir = None
        _state.pinned = False


def redirect_chatter(out_dir: Path, pin: bool = False) -> Path | None:
    """Inside a session: send this process's stderr (Ray, Serve, Ray Data, vLLM) to
    OUT/logs/ray-vllm.log from now on. Returns the log file, or None outside a session.

    `pin`: keep this folder for the rest of the session (a sweep runs points side by side in
    threads of one process, and descriptor 2 is one for all of them)."""
    if _state.console is None:
        return None
    if _state.pinned:
        return _state.log_dir / LOG_NAME
    log_dir = Path(out_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / LOG_NAME
    sys.stderr.flush()
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
        f.flush()
        os.dup2(f.fileno(), 2)
    if _state.log_dir != log_dir:
        say(f"Ray and vLLM logs -> {log_dir}/")
    _state.log_dir = log_dir
    _state.pinned = pin
    return path


def _link_ray_session(log_dir: Path) -> None:
    """DIR/logs/ray-session -> the local Ray session's logs (workers, replicas, vLLM)."""
    try:
        import ray

        if not ray.is_initialized():
            return
        session_logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    except Exception:  # a remote cluster or a Ray without that attribute: nothing to link
        return
    link = log_dir / SESSION_LINK
    if session_logs.is_dir() and not link.exists():
        try:
            link.symlink_to(session_logs, target_is_directory=True)
        except OSError:
            pass


@contextmanager
def elapsed(what: str, every_s: float = 10.0) -> Iterator[None]:
    """Show that something slow is under way: on a terminal one line that counts seconds,
    elsewhere a line every `every_s` seconds; then how long it took."""
    out = stream()
    tty = out.isatty()
    stop = threading.Event()
    t0 = time.monotonic()

    def tick() -> None:
        while not stop.wait(1.0 if tty else every_s):
            line = f"{what} ... {time.monotonic() - t0:.0f} s"
            out.write(f"\r{line}" if tty else f"{line}\n")
            out.flush()

    thread = threading.Thread(target=tick, name="geoxray-elapsed", daemon=True)
    thread.start()
    outcome = "failed after"
    try:
        yield
        outcome = "done in"
    finally:
        stop.set()
        thread.join()
        out.write(f"{chr(13) if tty else ''}{what}: {outcome} {time.monotonic() - t0:.0f} s\n")
        out.flush()


def progress_bar(total: int, desc: str, enabled: bool = True):
    """A progress bar on the terminal (never into the chatter log)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, dynamic_ncols=True,
                file=stream())
