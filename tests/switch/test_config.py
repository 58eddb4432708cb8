from pathlib import Path

import pytest

from switch.cli import main
from switch.config import ConfigError, load_settings


def test_defaults_are_the_profile_values():
    s = load_settings(environ={})
    assert s.frame_bytes_max == 2048
    assert s.idle_timeout_s == 300
    assert s.frame_timeout_s == 10
    assert s.hold_timeout_s == 120
    assert s.clock_skew_max_s == 300
    assert s.database_url is None


def test_environment_overrides_file(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text("[switch]\nlisten_port = 9000\nhold_timeout_s = 60\n")
    s = load_settings(config_file=f, environ={"LOYALTY_LISTEN_PORT": "9100"})
    assert s.listen_port == 9100
    assert s.hold_timeout_s == 60


def test_database_url_from_conventional_variable():
    s = load_settings(environ={"DATABASE_URL": "postgresql://u@h/db"})
    assert s.database_url == "postgresql://u@h/db"


@pytest.mark.parametrize(("env", "named"), [
    ({"LOYALTY_LISTEN_PORT": "70000"}, "listen_port"),
    ({"LOYALTY_FRAME_BYTES_MAX": "4096"}, "frame_bytes_max"),
    ({"LOYALTY_IDLE_TIMEOUT_S": "-1"}, "idle_timeout_s"),
    ({"LOYALTY_CONNECTIONS_MAX": "lots"}, "connections_max"),
    ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ({"LOYALTY_DB_POOL_SIZE_MIN": "10", "LOYALTY_DB_POOL_SIZE_MAX": "5"}, "db_pool_size_max"),
    ({"LOYALTY_TLS_KEY_FILE": "/k.pem"}, "tls_key_file"),
])
def test_bad_value_names_the_setting(env, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(environ=env)


# The sweeper's bounds: (setting, its largest value); the smallest is 1 for each.
SWEEP_BOUNDS = [("hold_sweep_batch_max", 100_000), ("lot_expiry_batch_max", 100_000),
                ("tier_review_batch_max", 100_000), ("tier_review_interval_days", 365)]


# Points spent as store credit (switch/points.py): (setting, its largest value), smallest 1.
POINTS_BOUNDS = [("points_value_max_rial", 1_000_000),
                 ("points_redeem_max_rial", 999_999_999_999)]


@pytest.mark.parametrize(("name", "top"), SWEEP_BOUNDS + POINTS_BOUNDS)
def test_bounds_are_accepted_at_their_ends_and_refused_past_them(name, top):
    env = "LOYALTY_" + name.upper()
    for value in (1, top):
        assert getattr(load_settings(environ={env: str(value)}), name) == value
    for value in (0, top + 1):
        with pytest.raises(ConfigError, match=rf"setting {name} \({env}\)"):
            load_settings(environ={env: str(value)})


def test_sweep_defaults():
    s = load_settings(environ={})
    assert (s.hold_sweep_batch_max, s.lot_expiry_batch_max, s.tier_review_batch_max,
            s.tier_review_interval_days) == (500, 500, 500, 30)


def test_unknown_key_in_file_is_refused(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text("listen_prot = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'listen_prot'"):
        load_settings(config_file=f, environ={})


def test_broken_file_is_refused(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text("listen_port = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config_file=f, environ={})


def test_cli_exits_2_naming_the_setting(monkeypatch, capsys):
    monkeypatch.setenv("LOYALTY_HOLD_TIMEOUT_S", "0")
    assert main(["db", "url"]) == 2
    assert "hold_timeout_s" in capsys.readouterr().err
