"""A token bucket for what the guest can make the monitor do on the host's disk.

Every event the agent sends is the guest's choice; logging each one lets a
guest fill the host's disk through monitor.log. Log lines caused by the guest
go through a bucket: a burst, then a steady trickle, the rest counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Bucket:
    burst: float = 20.0
    per_second: float = 1.0
    dropped: int = 0
    _tokens: float = field(init=False)
    _last: float = field(default_factory=time.monotonic, init=False)

    def __post_init__(self) -> None:
        self._tokens = self.burst

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.per_second)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.dropped += 1
        return False
