"""Shared test machinery for vmrt's runtime-level suites (tests/vm, tests/compat).

The suites run unchanged against runc (VMRT_TEST_RUNTIME=runc) and vmrt (default)."""
