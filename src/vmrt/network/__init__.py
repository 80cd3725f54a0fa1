"""Pod networking: the pod's network namespace, and CNI's interfaces carried into the VM.

The CLI-side hooks (`requested`, `attach`, `shim_netns`, `cleanup`) are cheap and
import no pyroute2; the scanning (`scan`) and tap/tc work (`tap`) run in the
monitor, which lives in the namespace (`vmrt.monitor.network`).
"""

from __future__ import annotations

from vmrt.network.attach import attach, cleanup, shim_netns
from vmrt.network.netns import requested

__all__ = ["attach", "cleanup", "requested", "shim_netns"]
