from __future__ import annotations

import pytest

from server.settings import SettingsError, load_settings


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
        ({"REGULARS_ENV": "prod", "REGULARS_JWT_SECRET": "j" * 40}, "REGULARS_POS_SEAL_KEY"),
        (
            {
                "REGULARS_ENV": "prod",
                "REGULARS_JWT_SECRET": "j" * 40,
                "REGULARS_POS_SEAL_KEY": "k" * 40,
                "REGULARS_POS_WEBHOOK_PRIVATE_OK": "true",
            },
            "REGULARS_POS_WEBHOOK_PRIVATE_OK",
        ),
        ({"REGULARS_WORKER_DUTY": "0"}, "REGULARS_WORKER_DUTY"),
        ({"REGULARS_WORKER_DUTY": "1.5"}, "REGULARS_WORKER_DUTY"),
        ({"REGULARS_JOB_CHUNK_SIZE": "0"}, "REGULARS_JOB_CHUNK_SIZE"),
        ({"REGULARS_METRICS_CLIENTS": "10.0.0.0/33"}, "REGULARS_METRICS_CLIENTS"),
        ({"REGULARS_METRICS_CLIENTS": "prometheus.local"}, "REGULARS_METRICS_CLIENTS"),
        ({"REGULARS_ORDER_BODY_MAX_BYTES": "0"}, "REGULARS_ORDER_BODY_MAX_BYTES"),
    ],
)
def test_a_bad_value_names_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(environ)
    assert named in str(refused.value)


def test_trusted_proxies_must_be_cidrs() -> None:
    settings = load_settings({"REGULARS_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8"})
    assert settings.trusted_proxies == "10.0.0.0/8, fd00::/8"
    with pytest.raises(SettingsError, match="REGULARS_TRUSTED_PROXIES"):
        load_settings({"REGULARS_TRUSTED_PROXIES": "10.0.0.0/8, not-a-network"})
