"""Fault injection for the crash tests: `LOYALTY_SETTLE_FAULT=<step>` makes the process kill
itself with SIGKILL when it reaches that step (no cleanup, no commit, like a power cut).
Steps: after_assign, after_netting, after_payouts (inside the settling transaction),
after_commit, mid_export (a file half written)."""

from __future__ import annotations

import os
import signal

ENV = "LOYALTY_SETTLE_FAULT"


def fault(step: str) -> None:
    if os.environ.get(ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
