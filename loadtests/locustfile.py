"""The Regulars load suite: ``locust -f loadtests/locustfile.py`` (see loadtests/README.md).

Guests (weight 20), baristas (2; disabled until the kiosk endpoints exist) and POS tills (3;
disabled until /v1/pos/receipts exists and a key is configured), the SLO gate on exit.
No load shape here: -u/-r or the web UI set the users. For the morning rush use
``loadtests/rush.py``, which adds the ``MorningRush`` shape to the same users.
"""

from loadtests import slo  # noqa: F401  (registers the SLO gate's options and exit hook)
from loadtests.users import BaristaUser, GuestUser, PosUser

__all__ = ["BaristaUser", "GuestUser", "PosUser"]
