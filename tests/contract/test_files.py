"""contract.files.atomic_write: the mode a plain open() would give, not mkstemp's owner-only 0600."""

import os
import stat

from contract import files


def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path):
    written = tmp_path / "manifest.json"
    files.atomic_write(written, "{}")
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~files._UMASK


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    files.atomic_write(tmp_path / "a.bin", b"\x00\x01")
    assert os.listdir(tmp_path) == ["a.bin"]


def test_recorded_paths_hide_the_home_directory_and_expand_back(tmp_path, monkeypatch):
    home = tmp_path / "home" / "someone"
    monkeypatch.setenv("HOME", str(home))
    recorded = files.recorded_path(home / "data" / "cifar10")
    assert recorded == "~/data/cifar10" and os.path.expanduser(recorded) == str(home / "data" / "cifar10")
    assert files.recorded_path(recorded) == recorded and files.recorded_path(home) == "~"
    for kept in ("/data/cifar10", str(tmp_path / "home" / "someone-else"), "data/cifar10"):
        assert files.recorded_path(kept) == kept  # no home directory in it
    monkeypatch.setenv("HOME", "/")  # a home of "/" would turn every path into "~/..."
    assert files.recorded_path("/data/cifar10") == "/data/cifar10"
