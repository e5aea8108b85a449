from __future__ import annotations

import os

import pytest

from server.settings import SettingsError, load_settings, parse_cpu_list


def test_defaults_and_environment() -> None:
    settings = load_settings({"REGULARS_DB_POOL_MAX": "7", "OTHER": "x"})
    assert settings.db_pool_max == 7 and settings.data_dir == ".regulars"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"REGULARS_DB_POOL_MAX": "lots"}, "REGULARS_DB_POOL_MAX"),
        ({"REGULARS_DB_POOL_MAX": "0"}, "REGULARS_DB_POOL_MAX"),
        ({"REGULARS_DB_POOL_MIN": "9", "REGULARS_DB_POOL_MAX": "3"}, "REGULARS_DB_POOL_MIN"),
        ({"REGULARS_LOG_FORMAT": "xml"}, "REGULARS_LOG_FORMAT"),
        ({"REGULARS_DATABSE_URL": "postgresql://"}, "REGULARS_DATABSE_URL"),
        ({"REGULARS_ENV": "prod"}, "REGULARS_JWT_SECRET"),
        ({"REGULARS_CPUS": "one"}, "REGULARS_CPUS"),
        ({"REGULARS_CPUS": "4096"}, "REGULARS_CPUS"),
        ({"REGULARS_CPUS": "1-"}, "REGULARS_CPUS"),
    ],
)
def test_a_bad_value_names_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(environ)
    assert named in str(refused.value)


def test_cpu_lists_read_as_linux_writes_them() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    first, last = cpus[0], cpus[-1]
    assert parse_cpu_list(str(first)) == {first}
    assert parse_cpu_list(f"{first}-{last},{first}") == set(range(first, last + 1)) & set(cpus)
    assert load_settings({"REGULARS_CPUS": str(last)}).cpus == str(last)
