"""`features`: what vmrt really does with a config.json, in runc's `features` format.

Containers run under crun in the guest, so what crun and the guest kernel
(6.1) support is what a container gets, minus what vmrt removes on the way
(`runtime/guestspec.py`): hooks are not run (they would run host binaries;
vmrt drops them), AppArmor profiles and SELinux labels are dropped (the guest
has no policy), cgroups are the guest's v2 tree (crun's cgroupfs manager, no
systemd), and a network namespace is the pod VM's network, not a new one.
"""

from __future__ import annotations

from typing import Any

from vmrt import OCI_VERSION, __version__

#: crun's mount options (a superset of runc's list; all work in the guest kernel).
MOUNT_OPTIONS = (
    "acl", "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec",
    "iversion", "lazytime", "loud", "mand", "noacl", "noatime", "nodev",
    "nodiratime", "noexec", "noiversion", "nolazytime", "nomand", "norelatime",
    "nostrictatime", "nosuid", "nosymfollow", "private", "ratime", "rbind", "rdev",
    "rdiratime", "relatime", "remount", "rexec", "rnoatime", "rnodev", "rnodiratime",
    "rnoexec", "rnorelatime", "rnostrictatime", "rnosuid", "rnosymfollow", "ro", "rprivate",
    "rrelatime", "rro", "rrw", "rshared", "rslave", "rstrictatime", "rsuid", "rsymfollow",
    "runbindable", "rw", "shared", "silent", "slave", "strictatime", "suid", "symfollow",
    "sync", "tmpcopyup", "unbindable",
)

#: Every capability the guest kernel (6.1) knows, in number order.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)

#: libseccomp 2.5 (crun's, in the guest).
SECCOMP_ACTIONS = (
    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
)
SECCOMP_OPERATORS = (
    "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE",
)
#: The guest is x86-64; 32-bit x86 and x32 binaries run there too.
SECCOMP_ARCHS = ("SCMP_ARCH_X32", "SCMP_ARCH_X86", "SCMP_ARCH_X86_64")


def features() -> dict[str, Any]:
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": [],  # dropped: a VM runtime does not run the bundle's host binaries
        "mountOptions": list(MOUNT_OPTIONS),
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": list(CAPABILITIES),
            "cgroup": {"v1": False, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {"enabled": True, "actions": list(SECCOMP_ACTIONS),
                        "operators": list(SECCOMP_OPERATORS), "archs": list(SECCOMP_ARCHS)},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {
            "org.opencontainers.runc.checkpoint.enabled": "false",
            "run.vmrt.version": __version__,
            "run.vmrt.guest.runtime": "crun",
            "run.vmrt.network": "a network namespace is the pod VM's network",
            "run.vmrt.pids": "ps and events report guest pids",
        },
    }
