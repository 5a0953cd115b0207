"""``cnnjax.onednn`` is :mod:`cnnjax.lowering.onednn` (the same module object, so patching either patches both)."""

import sys

from cnnjax.lowering import onednn

sys.modules[__name__] = onednn
