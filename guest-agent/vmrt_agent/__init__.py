"""vmrt's guest agent: PID 1 of a pod VM, the guest side of docs/agent-protocol.md.

Stdlib only: it runs under ``python3 -I -S`` from an initramfs that holds the
interpreter, busybox and crun, and nothing else.
"""
