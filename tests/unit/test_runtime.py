"""Freezing start-up objects: they leave the GC's reach, later garbage is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from server.infra.runtime import freeze_startup_objects
from server.settings import load_settings


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic GC frees it


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test process collects as before


def test_objects_alive_at_startup_are_frozen_and_later_cycles_still_collected(
    unfrozen: None,
) -> None:
    startup = _Node()
    kept = weakref.ref(startup)
    freeze_startup_objects()
    del startup
    gc.collect()
    assert kept() is not None  # frozen: no collection traverses it any more

    later = _Node()
    gone = weakref.ref(later)
    del later
    gc.collect()
    assert gone() is None


def test_freezing_is_off_unless_a_server_asks_for_it() -> None:
    assert load_settings(environ={}).gc_freeze is False
    assert load_settings(environ={"REGULARS_GC_FREEZE": "true"}).gc_freeze is True


def test_the_pool_warm_up_is_off_unless_a_server_asks_for_it() -> None:
    assert load_settings(environ={}).db_warm_up is False
    assert load_settings(environ={"REGULARS_DB_WARM_UP": "true"}).db_warm_up is True
