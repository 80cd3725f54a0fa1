"""Play conmon: be a child subreaper, create a container, wait for its pid.

    python subreaper.py --runtime-argv JSON --bundle B --pid-file P --id ID
                        --report-fd N [--start]

1. prctl(PR_SET_CHILD_SUBREAPER, 1).
2. Run `<runtime-argv> create --bundle B --pid-file P ID` with this process's own
   stdin/stdout/stderr (whatever the test gave us: they become the container's).
3. Read the pid file and check that the pid is now OUR child (the runtime forked it and
   exited, so the kernel re-parented it to us, the subreaper).
4. With --start, run `<runtime-argv> start ID` (otherwise the test starts/kills it).
5. waitpid() the pid and report how it ended.

Everything is reported as JSON lines on fd N (never on stdout: that is the container's):
    {"event": "create", "rc": 0, "stderr": "..."}
    {"event": "created", "pid": 1234, "child": true, "ppid": 99, "me": 99}
    {"event": "start", "rc": 0, "stderr": ""}
    {"event": "exit", "child": true, "exited": 3}      or  ..."signaled": 9}
A pid that is not our child cannot be waited for; then we poll until it is gone and
report {"event": "exit", "child": false, "gone": true}.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def set_subreaper() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_SET_CHILD_SUBREAPER)")


def ppid_of(pid: int) -> int | None:
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115, PTH123
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def alive(pid: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115, PTH123
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] not in ("Z", "X")


def run_captured(argv: list[str]) -> tuple[int, str]:
    """Run with our stdin/stdout inherited (the container gets them), stderr captured
    to a file so we can report it (a pipe would be held open by the container)."""
    import tempfile

    with tempfile.TemporaryFile() as err:
        rc = subprocess.run(argv, stderr=err, check=False).returncode
        err.seek(0)
        return rc, err.read().decode(errors="replace")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtime-argv", required=True, help="JSON list: binary + global flags")
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--pid-file", required=True)
    ap.add_argument("--id", required=True)
    ap.add_argument("--report-fd", type=int, required=True)
    ap.add_argument("--start", action="store_true")
    ap.add_argument("--gone-timeout", type=float, default=300.0)
    opts = ap.parse_args()

    os.set_inheritable(opts.report_fd, False)
    report = os.fdopen(opts.report_fd, "w", buffering=1)

    def say(**kw: object) -> None:
        report.write(json.dumps(kw) + "\n")
        report.flush()

    set_subreaper()
    prefix = json.loads(opts.runtime_argv)
    me = os.getpid()

    rc, err = run_captured([*prefix, "create", "--bundle", opts.bundle,
                            "--pid-file", opts.pid_file, opts.id])
    say(event="create", rc=rc, stderr=err)
    if rc != 0:
        return 2
    try:
        pid = int(open(opts.pid_file).read().strip())  # noqa: SIM115, PTH123
    except (OSError, ValueError) as e:
        say(event="created", error=f"pid file: {e}")
        return 3
    ppid = ppid_of(pid)
    child = ppid == me
    say(event="created", pid=pid, child=child, ppid=ppid, me=me)

    if opts.start:
        rc, err = run_captured([*prefix, "start", opts.id])
        say(event="start", rc=rc, stderr=err)

    if not child:
        deadline = time.monotonic() + opts.gone_timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        say(event="exit", child=False, gone=not alive(pid))
        return 0

    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status):
        say(event="exit", child=True, exited=os.WEXITSTATUS(status))
    elif os.WIFSIGNALED(status):
        say(event="exit", child=True, signaled=os.WTERMSIG(status))
    else:
        say(event="exit", child=True, status=status)
    # Reap whatever else was re-parented to us meanwhile (conmon does the same).
    while True:
        try:
            wpid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if wpid == 0:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
