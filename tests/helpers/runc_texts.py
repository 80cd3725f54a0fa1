"""Error texts runc 1.1.5 (Debian 12, /usr/sbin/runc) really prints, observed on this
machine with `--log <file> --log-format json`.  Container managers match on some of
them (CRI-O: "container not running", "no such process"; containerd's shim:
"container does not exist", ...), so vmrt is held to the same words.

Every error below is: exit status 1, nothing on stdout, the text as ONE line on stderr,
and the same text as {"level":"error","msg":<text>,"time":...} appended to --log.
(Without --log, runc writes logrus' text format to stderr instead:
`time="..." level=error msg="..."`.)

Errors from `create` and `run` carry the prefix "runc create failed: " /
"runc run failed: " - hard-coded "runc", whatever argv[0] is.
"""

from __future__ import annotations

EXIT_ERROR = 1  # every runc failure below exits 1

# "{prog} {verb} failed: {cause}" for create / run
VERB_FAILED = "{prog} {verb} failed: "

# -- lookups (state / start / kill / delete / pause ... on a bad or unknown id) ----------
CONTAINER_NOT_EXIST = "container does not exist"
INVALID_ID_FORMAT = "invalid container ID format"  # "a/b", "..", ".", "a\nb"
EMPTY_ID = "container id cannot be empty"  # ""
# `delete --force <unknown id>` is NOT an error for runc: exit 0, no output.

# -- create / run causes (after the "runc create failed: " prefix) -----------------------
ALREADY_EXISTS = "container with given ID already exists"
CONFIG_NOT_FOUND = "JSON specification file config.json not found"
ROOT_NOT_SPECIFIED = "root must be specified"
PROCESS_EMPTY = "process property must not be empty"
# bundle directory missing: "chdir <bundle>: no such file or directory"
CHDIR_MISSING = "chdir {bundle}: no such file or directory"
# root.path missing: "invalid rootfs: stat <rootfs>: no such file or directory"
INVALID_ROOTFS = "invalid rootfs: stat {rootfs}: no such file or directory"
ARGS_EMPTY = "args must not be empty"
CWD_NOT_ABSOLUTE = "Cwd must be an absolute path"
ROOTFS_SYMLINK = "invalid rootfs: not an absolute path, or a symlink"
TTY_WITHOUT_CONSOLE_SOCKET = (
    "cannot allocate tty if runc will detach without setting console socket")
CONSOLE_SOCKET_ABSENT = "dial unix {path}: connect: no such file or directory"
# The program is looked up at create time, in the container's rootfs and PATH; podman
# maps "executable file not found" / "no such file or directory" to exit code 127.
EXEC_NOT_FOUND_ABS = (
    'unable to start container process: exec: "{exe}": stat {exe}: no such file or directory')
EXEC_NOT_IN_PATH = (
    'unable to start container process: exec: "{exe}": executable file not found in $PATH')
ENV_INVALID = ('unable to start container process: error during container init: '
               'invalid environment variable: "{var}"')
ID_TOO_LONG_RE = r"runc create failed: lstat .*: file name too long"  # 300-char id
# JSON decoding errors are Go's encoding/json texts; vmrt is only held to the prefix.
JSON_TRUNCATED = "unexpected EOF"  # truncated document
JSON_EMPTY = "EOF"  # zero-byte config.json
JSON_GARBAGE = "invalid character 'o' in literal null (expecting 'u')"  # "not json at all"
JSON_ARRAY = "json: cannot unmarshal array into Go value of type specs.Spec"  # "[]"
JSON_ARGS_STRING = ("json: cannot unmarshal string into Go struct field Process.process.args"
                    " of type []string")  # "args": "sh"

# -- state transitions ---------------------------------------------------------------------
START_RUNNING = "cannot start an already running container"
START_STOPPED = "cannot start a container that has stopped"
DELETE_RUNNING = "cannot delete container {id} that is not stopped: running"
KILL_NOT_RUNNING = "container not running"  # kill of a stopped container
UNKNOWN_SIGNAL = 'unknown signal "{sig}"'  # kill ID NOSUCHSIG (name not known)
SIGNAL_INVALID_NUMBER = "unable to signal init: invalid argument"  # kill ID 99

# -- ps / pause / resume / update / events (observed the same way) ------------------------
PAUSE_NOT_RUNNING = "container not running"  # pause of a paused or stopped container
RESUME_NOT_PAUSED = "container not paused"
START_PAUSED = "cannot start a container in the paused state"
DELETE_PAUSED = "cannot delete container {id} that is not stopped: paused"
UPDATE_NOT_RUNNING = "container not running"  # update of a stopped container
UPDATE_BAD_MEMORY = "invalid value for memory: invalid size: '{value}'"
EVENTS_NOT_RUNNING = "container with id {id} is not running"  # events of a stopped one
EVENTS_BAD_INTERVAL = "duration interval must be greater than 0"  # --interval 0
PS_BAD_FORMAT = "invalid format option"
# * `ps --format json` of a stopped container prints "null"; `ps` its header alone.
# * A created container can be paused; resumed, it is `created` again.
# * runc's `events` stream never ends by itself, not even once the container stopped.

# -- usage errors (also print the command's help on stdout) --------------------------------
REQUIRES_ONE_ARG = 'runc: "{verb}" requires exactly 1 argument(s)'
FLAG_NOT_DEFINED = "flag provided but not defined: {flag}"

# -- quirks worth knowing ------------------------------------------------------------------
# * `list --format json` with no containers prints "null" (not "[]").
# * `list` creates --root if it is missing.
# * `kill ID sigterm` (lower case) is accepted; so are "TERM", "SIGTERM" and "15".
# * `kill ID 0` on a live container succeeds (a liveness probe).
# * `delete ID` (no --force) of a *created* container succeeds and kills its init.
# * Accepted by runc: no ociVersion, unknown top-level fields, relative mount
#   destinations, ids such as ".hidden", "...", "a+b-c_d.e" (id rule ^[\w+\-.]+$ minus
#   "." and "..").
# * SIGTERM to a container whose init is `sleep` in its own pid namespace does nothing
#   (pid 1 ignores signals it has no handler for); `sh -c 'kill -9 $$'` as pid 1 cannot
#   kill itself either - it exits 0.
