"""The board path over a real OpenSSH server on 127.0.0.1, playing a Jetson: copy, run remotely, bring back.

The server, its host key and the user key are throwaway, in a temporary directory; the test skips (with the
reason) when sshd is missing or cannot start here.
"""
import getpass
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from edgevit.bench import bench
from edgevit.bench.ssh import SshTarget
from edgevit.errors import EdgevitError

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    if not os.path.exists(SSHD) or shutil.which("ssh") is None:
        pytest.skip("OpenSSH server/client not installed (apt-get install openssh-server openssh-client)")
    home = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / key)], check=True)
    shutil.copy(home / "user_key.pub", home / "authorized_keys")
    os.chmod(home / "authorized_keys", 0o600)
    port = _free_port()
    (home / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        f"PidFile {home / 'sshd.pid'}\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    server = subprocess.Popen([SSHD, "-D", "-f", str(home / "sshd_config"), "-E", str(home / "sshd.log")])
    options = ["-i", str(home / "user_key"), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR"]
    target = SshTarget(host="127.0.0.1", user=getpass.getuser(), port=port, options=options)
    for _ in range(50):
        if server.poll() is not None:
            pytest.skip(f"sshd could not start here: {(home / 'sshd.log').read_text()[-300:]}")
        try:
            target.check_reachable()
            break
        except EdgevitError:
            time.sleep(0.2)
    else:
        server.kill()
        pytest.skip("sshd started but refused the throwaway key")
    yield target, home
    server.terminate()
    server.wait(timeout=10)


def _device(target: SshTarget) -> str:
    return f"jetson:{target.user}@{target.host}:{target.port}"


def test_the_host_runner_runs_on_the_board_over_ssh(board, small_bundles):
    target, home = board
    report = bench([small_bundles["onnx"]], device=_device(target), runners=[f"edgevit:{sys.executable}"],
                   iters=5, warmup=1, ssh_options=target.options, remote_dir=str(home / "remote"))
    [measurement] = report["measurements"]
    assert measurement["status"] in ("ok", "unstable"), measurement["error"]
    assert measurement["runtime"] == "onnxruntime" and len(measurement["samples_ms"]) == 5
    assert measurement["device"] == _device(target)
    copied = home / "remote" / "t2t_vit_7-onnx-fp32"
    assert (copied / "model.onnx").read_bytes() == (small_bundles["onnx"] / "model.onnx").read_bytes()
    assert report["environment"]["cores"] >= 1 and report["environment"]["matmul_peak_gflops"] > 0


def test_a_board_without_trtexec_says_where_to_find_it(board, small_bundles):
    target, home = board
    with pytest.raises(EdgevitError, match="trtexec was not found.*--runner PATH"):
        bench([small_bundles["onnx"]], device=_device(target), ssh_options=target.options,
              remote_dir=str(home / "remote"))


CRASHING_TRTEXEC = """#!/bin/sh
# prints what trtexec prints up to its first timing lines, then dies like a crashed process
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec $*"
echo "[11/21/2026-10:00:00] [I] === Model Options ==="
echo "[11/21/2026-10:00:01] [E] Error[1]: [defaultAllocator.cpp::allocate::19] Error Code 1: Cuda Runtime (out of memory)"
kill -SEGV $$
"""


def test_a_runner_that_crashes_is_reported_not_hidden(board, small_bundles):
    target, home = board
    runner = home / "trtexec"
    runner.write_text(CRASHING_TRTEXEC)
    runner.chmod(0o755)
    report = bench([small_bundles["onnx"]], device=_device(target), runners=[str(runner)], iters=5, warmup=0,
                   ssh_options=target.options, remote_dir=str(home / "remote"))
    [measurement] = report["measurements"]
    assert measurement["status"] == "failed" and measurement["latency_ms"] is None
    assert "out of memory" in measurement["error"] and "engine build" in measurement["error"]


def test_an_unreachable_board_gets_one_clear_message(small_bundles):
    with pytest.raises(EdgevitError, match="cannot reach .* over ssh"):
        bench([small_bundles["onnx"]], device=f"jetson:nobody@127.0.0.1:{_free_port()}",
              ssh_options=["-o", "StrictHostKeyChecking=no"])
