"""vmrt: a VM-based OCI runtime with runc's command line.

Imports nothing on purpose: every CLI call starts here, and `vmrt state` must stay fast.
"""

__version__ = "0.1.0"
OCI_VERSION = "1.0.2"
