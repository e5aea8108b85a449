"""Load shapes. ``MorningRush``: the café's morning, compressed.

    users
    spike ·················┌──┐               3 × peak for 60 s (a train arrives)
                           │  │
    peak  ········┌────────┘  └────────┐
                 /                      \\
    base  ──────/                        \\────  then stop
          baseline  ramp     hold (spike in the middle)   decay

Every stage is configurable by environment variables (read when the shape starts):

| variable | default | meaning |
| --- | --- | --- |
| RUSH_BASE_USERS | 10 | users at night / before the rush |
| RUSH_PEAK_USERS | 60 | users at the rush |
| RUSH_SPIKE_FACTOR | 3 | spike users = factor × peak |
| RUSH_BASELINE_S, RUSH_RAMP_S, RUSH_HOLD_S | 60, 300, 600 | stage lengths |
| RUSH_SPIKE_S, RUSH_SPIKE_RAMP_S, RUSH_DECAY_S | 60, 10, 180 | |
| RUSH_TIME_SCALE | 1.0 | multiply every length (0.1 = a 2-minute rehearsal) |
| RUSH_USER_SCALE | 1.0 | multiply every user count |

Users are added at the ramp's own slope (never all at once), so their first requests do not
line up; the wait times of the user classes are random too, so load never pulses.
"""

from __future__ import annotations

from dataclasses import dataclass

from locust import LoadTestShape

from loadtests.common import env_float, env_int

__all__ = ["MorningRush", "RushPlan"]


@dataclass(frozen=True)
class RushPlan:
    base: int = 10
    peak: int = 60
    spike_factor: float = 3.0
    baseline_s: float = 60
    ramp_s: float = 300
    hold_s: float = 600
    spike_s: float = 60
    spike_ramp_s: float = 10
    decay_s: float = 180

    @classmethod
    def from_env(cls) -> RushPlan:
        t, u = env_float("RUSH_TIME_SCALE", 1.0), env_float("RUSH_USER_SCALE", 1.0)
        d = cls()
        return cls(
            base=max(1, round(env_int("RUSH_BASE_USERS", d.base) * u)),
            peak=max(1, round(env_int("RUSH_PEAK_USERS", d.peak) * u)),
            spike_factor=env_float("RUSH_SPIKE_FACTOR", d.spike_factor),
            baseline_s=env_float("RUSH_BASELINE_S", d.baseline_s) * t,
            ramp_s=max(1.0, env_float("RUSH_RAMP_S", d.ramp_s) * t),
            hold_s=env_float("RUSH_HOLD_S", d.hold_s) * t,
            spike_s=env_float("RUSH_SPIKE_S", d.spike_s) * t,
            spike_ramp_s=max(1.0, env_float("RUSH_SPIKE_RAMP_S", d.spike_ramp_s) * t),
            decay_s=max(1.0, env_float("RUSH_DECAY_S", d.decay_s) * t),
        )

    @property
    def spike(self) -> int:
        return round(self.peak * self.spike_factor)

    @property
    def total_s(self) -> float:
        return self.baseline_s + self.ramp_s + self.hold_s + self.spike_s + self.decay_s

    def at(self, t: float) -> tuple[int, float, str] | None:
        """(users, spawn rate per second, stage) at ``t`` seconds, or None when over."""
        ramp_rate = max(0.5, (self.peak - self.base) / self.ramp_s * 1.5)
        spike_rate = max(1.0, (self.spike - self.peak) / self.spike_ramp_s)
        decay_rate = max(0.5, (self.peak - self.base) / self.decay_s * 1.5)
        half_hold = self.hold_s / 2
        edges = [
            ("baseline", self.baseline_s),
            ("ramp", self.ramp_s),
            ("hold", half_hold),
            ("spike", self.spike_s),
            ("hold", half_hold),
            ("decay", self.decay_s),
        ]
        start = 0.0
        for stage, length in edges:
            if t < start + length:
                x = (t - start) / length if length else 1.0
                if stage == "baseline":
                    return self.base, ramp_rate, stage
                if stage == "ramp":
                    return round(self.base + (self.peak - self.base) * x), ramp_rate, stage
                if stage == "hold":
                    # Coming down from the spike goes as fast as going up.
                    return self.peak, spike_rate, stage
                if stage == "spike":
                    return self.spike, spike_rate, stage
                return round(self.peak - (self.peak - self.base) * x), decay_rate, stage
            start += length
        return None


class MorningRush(LoadTestShape):
    """Baseline → ramp → hold with a 3× spike for 60 s → decay. See the module docstring."""

    # Locust's LoadTestShape is unannotated (get_run_time returns seconds as a float).
    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.plan = RushPlan.from_env()

    def tick(self) -> tuple[int, float] | None:
        step = self.plan.at(self.get_run_time())  # type: ignore[no-untyped-call]
        return None if step is None else (step[0], step[1])
