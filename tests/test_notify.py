"""The systemd notify protocol against sockets the test owns (path and abstract)."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from s3mount.notify import notify


@pytest.fixture
def path_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_unset_is_a_noop(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_sends_one_datagram_to_path_socket(monkeypatch, path_socket):
    path, sock = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify("READY=1", "STATUS=mounted s3://b on /mnt") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=mounted s3://b on /mnt"


def test_abstract_socket(monkeypatch):
    name = f"s3mount-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1") is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_unreachable_socket_is_logged_not_raised(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert notify("READY=1") is False
    assert "cannot notify systemd" in caplog.text


def test_relative_address_is_refused(monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert notify("READY=1") is False
    assert "not a unix socket address" in caplog.text


@pytest.mark.parametrize("line", ["STATUS=two\nREADY=1", "READY"])
def test_malformed_lines_are_refused(monkeypatch, path_socket, line):
    path, sock = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with pytest.raises(ValueError):
        notify(line)
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_socket_is_closed_after_use(monkeypatch, path_socket):
    """The mount notifies for its whole life; each call must not leave a descriptor behind."""
    path, sock = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    before = sorted(os.listdir("/proc/self/fd"))
    for _ in range(3):
        notify("STATUS=ok")
    assert sorted(os.listdir("/proc/self/fd")) == before
