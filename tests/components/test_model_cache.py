"""The model cache: its folder, and folders built once, atomically, checked and rebuilt when damaged or stale."""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from components.model_cache import CHECKSUM_FILE, build_cached, cache_root, verify_folder, write_folder_atomically

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ cache_root


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("FLIPKD_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert cache_root() == tmp_path / "env"
    monkeypatch.delenv("FLIPKD_CACHE_DIR")
    assert cache_root() == tmp_path / "xdg" / "flipkd"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "flipkd"


# ------------------------------------------------------------------------------------ atomic cached folders


def _writer(calls, payload=b"weights" * 100):
    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(payload)
        (folder / "sub").mkdir()
        (folder / "sub" / "extra.txt").write_text("extra")

    return build


def test_build_cached_builds_once(tmp_path):
    calls = []
    target = tmp_path / "models" / "m"
    assert build_cached(target, _writer(calls)) == target
    assert build_cached(target, _writer(calls)) == target
    assert len(calls) == 1
    assert calls[0].parent == target.parent and calls[0] != target  # built in a sibling temp folder
    manifest = json.loads((target / CHECKSUM_FILE).read_text())
    assert set(manifest["files"]) == {"config.json", "model.safetensors", "sub/extra.txt"}
    assert verify_folder(target, "full") is None
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")) == ["m"]


def test_leftover_temp_folder_is_cleaned(tmp_path):
    target = tmp_path / "m"
    stale = tmp_path / ".m.tmp-99999-deadbeef"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half written")
    build_cached(target, _writer([]))
    assert not stale.exists()
    assert verify_folder(target) is None


DAMAGES = ["missing_manifest", "truncated", "same_size_flip", "missing_file", "garbage_manifest"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_cache_folder_is_rebuilt(tmp_path, caplog, damage):
    calls = []
    target = tmp_path / "m"
    build_cached(target, _writer(calls))
    weights = target / "model.safetensors"
    if damage == "missing_manifest":
        (target / CHECKSUM_FILE).unlink()
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:10])
    elif damage == "same_size_flip":
        data = bytearray(weights.read_bytes())
        data[5] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "missing_file":
        (target / "sub" / "extra.txt").unlink()
    else:
        (target / CHECKSUM_FILE).write_text("{not json")
    # a same-size change is only seen by the full sha256 check (the documented cost/safety trade-off)
    verify = "full" if damage == "same_size_flip" else "size"
    if damage == "same_size_flip":
        build_cached(target, _writer(calls))
        assert len(calls) == 1
    with caplog.at_level(logging.WARNING, logger="components.model_cache"):
        build_cached(target, _writer(calls), verify=verify)
    assert len(calls) == 2
    assert "rebuilding" in caplog.text
    assert verify_folder(target, "full") is None
    assert weights.read_bytes() == b"weights" * 100


def test_source_change_triggers_a_rebuild(tmp_path):
    calls = []
    target = tmp_path / "m"
    build_cached(target, _writer(calls), source={"version": "1"})
    build_cached(target, _writer(calls), source={"version": "1"})
    build_cached(target, _writer(calls), source={"version": "2"})
    assert len(calls) == 2


def test_failed_build_leaves_nothing(tmp_path):
    def broken(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt  # also BaseException: Ctrl-C in the middle of a conversion

    target = tmp_path / "m"
    with pytest.raises(KeyboardInterrupt):
        build_cached(target, broken)
    assert not target.exists()
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


def test_killed_build_leaves_only_a_temp_folder_that_is_cleaned(tmp_path):
    target = tmp_path / "m"
    started = tmp_path / "started"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from components.model_cache import build_cached
        def build(folder):
            (folder / "config.json").write_text("{{}}")
            Path({str(started)!r}).write_text("yes")
            time.sleep(60)
        build_cached(Path({str(target)!r}), build)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.time() + 60
        while not started.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the child never started building"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert not target.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".m.tmp-")
    build_cached(target, _writer([]))
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["m"]


def test_write_folder_atomically_refuses_or_replaces(tmp_path):
    target = tmp_path / "out"
    write_folder_atomically(target, _writer([]))
    with pytest.raises(FileExistsError):
        write_folder_atomically(target, _writer([]))
    write_folder_atomically(target, _writer([], payload=b"new"), replace=True)
    assert (target / "model.safetensors").read_bytes() == b"new"
    assert verify_folder(target, "full") is None
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_leftover_beside_a_valid_folder_is_cleaned_on_the_next_resolve(tmp_path):
    target = tmp_path / "m"
    build_cached(target, _writer([]))
    stale = tmp_path / ".m.old-4242-cafebabe"  # a deletion killed half-way
    stale.mkdir()
    other = tmp_path / ".m2.tmp-1-ab"  # another target's temp folder is left alone
    other.mkdir()
    build_cached(target, _writer([]))
    assert not stale.exists() and other.exists()
