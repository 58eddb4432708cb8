"""`loyalty admin terminal profile` and `terminal add --profile`: the files the simulator
reads, written owner-only, with the key nowhere else."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from protocol.dukpt import derive_initial_key
from simulator import profile as profiles
from switch import keys
from switch.cli import main
from tests.switch.conftest import cli  # noqa: F401  (the admin CLI fixture)


@pytest.fixture
def loyalty(cli):  # noqa: F811  (the imported fixture)
    """The admin CLI in process (tests/switch/test_cli.py's fixture) on the demo data."""
    assert cli("demo")[0] == 0
    return cli


def key_hex(tmp_path: Path, ik_id: bytes) -> str:
    store = keys.load(tmp_path / "keys.json")
    return derive_initial_key(store.bdk(ik_id[:4].hex().upper()), ik_id).hex().upper()


def test_profiles_are_written_owner_only_with_the_current_counter(loyalty, tmp_path) -> None:
    folder = tmp_path / "profiles"
    folder.mkdir()
    code, out, _ = loyalty("admin", "terminal", "profile", "CAFE0001", "HYPR0002",
                           "--out-dir", str(folder), "--switch", "switch.example:9000")
    assert code == 0
    for tid in ("CAFE0001", "HYPR0002"):
        path = folder / f"{tid}.json"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        made = profiles.load(path)
        assert (made.tid, made.host, made.port, made.ksn_counter) == (
            tid, "switch.example", 9000, 0)
        assert made.initial_key.hex().upper() == key_hex(tmp_path, made.initial_key_id)
        assert made.initial_key.hex().upper() not in out


def test_out_dir_is_made_when_missing_but_not_for_a_refused_request(loyalty, tmp_path) -> None:
    folder = tmp_path / "new" / "profiles"
    code, _, err = loyalty("admin", "terminal", "profile", "CAFE0001", "NOSUCH01",
                           "--out-dir", str(folder))
    assert code == 2 and "NOSUCH01" in err and not (tmp_path / "new").exists()
    code, _, _ = loyalty("admin", "terminal", "profile", "CAFE0001", "--out-dir", str(folder))
    assert code == 0 and profiles.load(folder / "CAFE0001.json").tid == "CAFE0001"


def test_terminal_add_can_write_the_key_to_a_profile_only(loyalty, tmp_path) -> None:
    code, out, _ = loyalty("admin", "bdk", "generate", "--id", "0A0B0C0D")
    assert code == 0
    path = tmp_path / "new.json"
    code, out, _ = loyalty("admin", "terminal", "add", "CAFE0009", "--merchant", "cafe-lale",
                           "--bdk", "0A0B0C0D", "--profile", str(path))
    assert code == 0 and "initial key written to the profile" in out
    data = json.loads(path.read_text())
    assert data["initial_key"] not in out
    assert data["initial_key"] == key_hex(tmp_path, bytes.fromhex(data["initial_key_id"]))


@pytest.mark.parametrize("argv", [
    ("admin", "terminal", "profile", "NOSUCH01", "--out", "{dir}/x.json"),
    ("admin", "terminal", "profile", "CAFE0001", "CAFE0002", "--out", "{dir}/x.json"),
    ("admin", "terminal", "profile", "CAFE0001", "--out", "{dir}/missing/x.json"),
    ("admin", "terminal", "profile", "CAFE0001", "--out", "{dir}/x.json", "--switch", "h"),
    ("admin", "terminal", "add", "CAFE0009", "--merchant", "cafe-lale", "--bdk", "00000000",
     "--profile", "{dir}/exists.json"),
])
def test_bad_profile_requests_exit_2_and_write_nothing(loyalty, tmp_path, argv) -> None:
    (tmp_path / "exists.json").write_text("{}")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = loyalty(*(a.replace("{dir}", str(tmp_path)) for a in argv))
    assert code == 2 and err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "exists.json").read_text() == "{}"


def test_run_once_drives_the_burst_and_prints_the_load_report(db_url, tmp_path, monkeypatch,
                                                              capsys) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("LOYALTY_KEY_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setenv("LOYALTY_LISTEN_PORT", "0")
    monkeypatch.setenv("LOYALTY_METRICS_PORT", "0")
    assert main(["run", "--once"]) == 0
    out = capsys.readouterr().out
    assert "from BARB0002, CAFE0002, HYPR0002" in out
    for line in ("load: 3 terminals, closed loop", "completed two-phase transactions/s",
                 "request (0100): p50", "confirm (0220): p50", "response codes, request: 00:"):
        assert line in out
    assert re.search(r"db check: \d+ invariants hold, 0 violated", out.split("load: 3")[1])


def test_loyalty_sim_is_the_sim_command(capsys) -> None:
    assert main(["sim", "scenario", "--list"]) == 0
    assert capsys.readouterr().out.split() == ["barber-sadaf", "cafe-lale", "hyper-setareh"]
    assert main(["sim", "echo", "--profile", "/nonexistent/p.json"]) == 2
    assert "does not exist" in capsys.readouterr().err
