"""The morning rush: the suite's users driven by the ``MorningRush`` shape.

``locust -f loadtests/rush.py --headless --host URL --csv loadtests/reports/rush --html ...``
(RUSH_* variables configure the shape; see loadtests/shapes.py).
"""

from loadtests import slo  # noqa: F401  (registers the SLO gate's options and exit hook)
from loadtests.shapes import MorningRush
from loadtests.users import BaristaUser, GuestUser, PosUser

__all__ = ["BaristaUser", "GuestUser", "MorningRush", "PosUser"]
