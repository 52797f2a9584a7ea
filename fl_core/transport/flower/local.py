"""A local Flower deployment on 127.0.0.1: one SuperLink, N SuperNodes, ``flwr run`` - and clean-up.

For trying privagg on Flower on one machine, for the integration test and for
the round-time benchmark. Every process is started in its own process group and
every group is stopped on exit (SIGTERM, then SIGKILL after a grace period),
whatever happened in between. Ports are picked free on 127.0.0.1; the Flower CLI
configuration lives in a private ``FLWR_HOME`` so the user's own is never touched.
This is the insecure mode (no TLS, no node authentication): see docs/flower.md for
a real deployment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fl_core.errors import FLError

__all__ = ["DeploymentError", "LocalDeployment", "free_port", "format_run_config"]


class DeploymentError(FLError):
    """A Flower process did not start, or ``flwr run`` failed or timed out."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(v: Any) -> str:
    if v is None:
        return '""'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_run_config(values: Mapping[str, Any]) -> str:
    """``{"per-round": 5, "dp": "distributed"}`` -> ``'per-round=5 dp="distributed"'`` for ``--run-config``."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in values.items())


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    fh: IO[bytes]


@dataclass
class LocalDeployment:
    """Start a SuperLink and ``nodes`` SuperNodes (``partition-id`` 0..nodes-1) on 127.0.0.1.

    Use as a context manager; :meth:`run` submits the app with ``flwr run``.

    Args:
        nodes: how many SuperNodes.
        workdir: where logs and ``FLWR_HOME`` go (a fresh temporary directory by default).
        env: extra environment variables for every process.
        task_poll_interval: seconds between a SuperNode executor's checks for a message to run.
        key_holders: Paillier key files (``privagg keygen paillier``); one key-holder SuperNode
            is started per file (``privagg-role="key-holder"``), after the client nodes.
        node_config: extra ``--node-config`` entries of every client SuperNode (e.g. a key pin).
        node_configs: extra ``--node-config`` entries of one client SuperNode, by partition id
            (e.g. its own ``data-dir``); they override ``node_config``.
        node_env: extra environment variables of one client SuperNode (and the ClientApp
            processes it starts), by partition id.
        simulation: start the SuperLink with Flower's simulation runtime (``--simulation``):
            no SuperNode processes are started (``nodes`` must be 0); :meth:`run` then asks
            for ``num_supernodes`` virtual SuperNodes (``flwr[simulation]``, i.e. Ray).
    """

    nodes: int
    workdir: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    task_poll_interval: float = 0.1
    key_holders: Sequence[str | Path] = ()
    node_config: Mapping[str, Any] = field(default_factory=dict)
    node_configs: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    node_env: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    simulation: bool = False
    port: int = 0
    procs: list[_Proc] = field(default_factory=list)
    supernodes: dict[int, _Proc] = field(default_factory=dict)
    holder_nodes: dict[int, _Proc] = field(default_factory=dict)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> LocalDeployment:
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="privagg-flower-")
            self.workdir = Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def home(self) -> Path:
        if self.workdir is None:
            raise DeploymentError("the deployment is not started")
        return self.workdir / "flwr-home"

    def _environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra or {})
        env["FLWR_HOME"] = str(self.home)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # How often a SuperNode's executor looks for a message to run (Flower's default: 1 s);
        # a protocol round has five message rounds, so the default would add seconds per round.
        env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", str(self.task_poll_interval))
        return env

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> _Proc:
        if self.workdir is None:  # pragma: no cover - set in __enter__
            raise DeploymentError("the deployment is not started")
        log = self.workdir / f"{name}.log"
        fh = log.open("wb")
        popen = subprocess.Popen(  # noqa: S603 - fixed argv of installed Flower commands
            argv, stdout=fh, stderr=subprocess.STDOUT, env=self._environ(env), cwd=self.workdir, start_new_session=True
        )
        proc = _Proc(name, popen, log, fh)
        self.procs.append(proc)
        return proc

    def _start(self) -> None:
        for exe in ("flower-superlink", "flower-supernode", "flwr"):
            if shutil.which(exe) is None:
                raise DeploymentError(f"{exe} is not on PATH: pip install 'privagg[flower]'")
        if self.simulation and (self.nodes or self.key_holders):
            raise DeploymentError("a simulation deployment starts no SuperNode processes: give nodes=0")
        self.port = free_port()
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n',
            encoding="utf-8",
        )
        self._spawn(
            "superlink",
            [
                "flower-superlink",
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
                *(["--simulation"] if self.simulation else []),
            ],
        )
        self._wait_port(self.port, timeout=60.0)
        for i in range(self.nodes):
            self.start_supernode(i)
        for i, key_file in enumerate(self.key_holders, start=1):
            self.start_key_holder(i, key_file)

    def _supernode_argv(self, node_config: Mapping[str, Any]) -> list[str]:
        return [
            "flower-supernode",
            "--insecure",
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--node-config",
            format_run_config(node_config),
            "--max-retries",
            "10",
        ]

    def start_supernode(self, partition_id: int) -> None:
        """Start the SuperNode of ``partition_id`` (client ``partition_id + 1``)."""
        config = {"partition-id": partition_id, **self.node_config, **self.node_configs.get(partition_id, {})}
        argv = self._supernode_argv(config)
        self.supernodes[partition_id] = self._spawn(f"supernode-{partition_id}", argv, self.node_env.get(partition_id))

    def start_key_holder(self, index: int, key_file: str | Path) -> None:
        """Start a Paillier key-holder SuperNode (not a client) that holds ``key_file``.

        Raises:
            DeploymentError: the key file does not exist.
        """
        path = Path(key_file).resolve()
        if not path.is_file():
            raise DeploymentError(f"key file {path} does not exist (write it with `privagg keygen paillier`)")
        argv = self._supernode_argv({"privagg-role": "key-holder", "paillier-key-file": str(path)})
        self.holder_nodes[index] = self._spawn(f"key-holder-{index}", argv)

    def kill_supernode(self, partition_id: int) -> None:
        """SIGKILL the SuperNode of ``partition_id`` and everything it started (a crashed machine)."""
        p = self.supernodes[partition_id]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.popen.pid, signal.SIGKILL)
        p.popen.wait(timeout=10)

    def _wait_port(self, port: int, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            for p in self.procs:
                if p.popen.poll() is not None:
                    raise DeploymentError(f"{p.name} exited with {p.popen.returncode}; see {p.log}")
            time.sleep(0.2)
        raise DeploymentError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")

    def run(
        self,
        app_dir: Path,
        run_config: Mapping[str, Any],
        *,
        timeout: float,
        num_supernodes: int | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``flwr run APP local --stream --run-config ...``; waits at most ``timeout`` seconds.

        ``num_supernodes``: the virtual SuperNodes of a simulation deployment.

        Raises:
            DeploymentError: ``flwr run`` failed or did not finish in time, or
                ``num_supernodes`` is missing for (or given to) a simulation (or another) deployment.
        """
        if self.simulation != (num_supernodes is not None):
            raise DeploymentError("num_supernodes is for (and needed by) a simulation deployment")
        argv = [
            "flwr",
            "run",
            str(Path(app_dir).resolve()),
            "local",
            "--stream",
            "--run-config",
            format_run_config(run_config),
        ]
        if num_supernodes is not None:
            argv += ["--federation-config", f"num-supernodes={int(num_supernodes)}"]
        proc = subprocess.Popen(  # noqa: S603
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._environ(),
            cwd=self.workdir,
            start_new_session=True,
            text=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            raise DeploymentError(f"flwr run did not finish within {timeout:.0f} s:\n{out[-4000:]}") from None
        result = subprocess.CompletedProcess(argv, proc.returncode, out, "")
        if proc.returncode != 0:
            raise DeploymentError(f"flwr run exited with {proc.returncode}:\n{out[-4000:]}")
        return result

    def logs(self) -> Iterator[tuple[str, str]]:
        """(name, text) of each process log."""
        for p in self.procs:
            yield p.name, p.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, *, grace: float = 8.0) -> None:
        """Stop every process group started here: SIGTERM, then SIGKILL after ``grace`` seconds."""
        for p in self.procs:
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        for p in self.procs:
            # The group may outlive its leader (the SuperNode's executor and ClientApps).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=5)
            p.fh.close()
        self.procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
