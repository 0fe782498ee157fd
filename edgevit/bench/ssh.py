"""An OpenSSH connection to a board (key authentication, no prompts): run, copy, and start workers."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EdgevitError

CONNECT_TIMEOUT_S = 10
_ADDRESS = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>[^@:\s]+)(?::(?P<port>\d+))?$")


@dataclass
class SshTarget:
    host: str
    user: str | None = None
    port: int | None = None
    options: list[str] = field(default_factory=list)  # extra `-o KEY=VALUE`, `-i KEY` arguments

    @classmethod
    def parse(cls, address: str, options=()) -> SshTarget:
        match = _ADDRESS.match(address or "")
        if not match:
            raise EdgevitError(f"'{address}' is not an ssh address; write USER@HOST or USER@HOST:PORT "
                               "(key authentication must already work: ssh-copy-id USER@HOST).")
        return cls(host=match["host"], user=match["user"], port=int(match["port"]) if match["port"] else None,
                   options=[part for option in options for part in shlex.split(option)])

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        return self.address + (f":{self.port}" if self.port else "")

    def _options(self) -> list[str]:
        if shutil.which("ssh") is None:
            raise EdgevitError("`ssh` is not installed here; install the OpenSSH client (apt-get install "
                               "openssh-client).")
        return ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                *(["-p", str(self.port)] if self.port else []), *self.options]

    def command(self, remote: str) -> list[str]:
        """argv that runs `remote` (a shell command line) on the board."""
        return ["ssh", *self._options(), self.address, remote]

    def run(self, remote: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run(self.command(remote), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EdgevitError(f"`{remote}` on {self} did not finish within {timeout:.0f} s.") from None
        if result.returncode == 255:  # ssh's own failure, as opposed to the remote command's
            raise EdgevitError(f"cannot reach {self} over ssh: {result.stderr.strip() or 'no reason given'}. "
                               f"Check the address, that the board is on, and that `ssh {self.address} true` "
                               "works without a password (ssh-copy-id).")
        if check and result.returncode != 0:
            raise EdgevitError(f"`{remote}` failed on {self} (exit {result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()[-800:]}")
        return result

    def check_reachable(self) -> None:
        self.run("true", timeout=CONNECT_TIMEOUT_S + 20)

    def copy_to(self, local: Path, remote_dir: str) -> None:
        """Copy a file or directory into `remote_dir` (relative paths are under the remote home).

        A tar stream over ssh, not scp: it needs nothing on the board but tar (no sftp subsystem).
        """
        local = Path(local)
        with subprocess.Popen(["tar", "-C", str(local.parent), "-cf", "-", local.name],
                              stdout=subprocess.PIPE) as archive:
            result = subprocess.run(self.command(f"mkdir -p {shlex.quote(remote_dir)} && "
                                                 f"tar -C {shlex.quote(remote_dir)} -xf -"),
                                    stdin=archive.stdout, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0 or archive.returncode != 0:
            raise EdgevitError(f"copying {local} to {self}:{remote_dir} failed: {result.stderr.strip()}")

    def read(self, remote_path: str) -> str | None:
        result = self.run(f"cat {shlex.quote(remote_path)}", check=False)
        return result.stdout if result.returncode == 0 else None
