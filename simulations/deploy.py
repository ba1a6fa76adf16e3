"""Run the fedhar app on Flower's deployment engine, on this machine (``fedhar deploy local``).

Where ``simulations.flwr_launch`` runs the app on a simulation-mode SuperLink (virtual
clients), this starts what a real federation runs, all on loopback (127.0.0.1):

  1. one ``flower-superlink`` without ``--simulation`` (the deployment engine), insecure,
     ``--isolation subprocess``, on a free port that serves its Fleet API (SuperNodes),
     ServerAppIo/Runtime API and Control API (``flwr``) alike (flwr 1.41), its own
     ``FLWR_HOME`` and SQLite state under ``<out-dir>/.flwr``;
  2. one ``flower-supernode`` per client of the configuration, each told its data by
     ``--node-config 'partition-id=P num-partitions=N [data-dir="..."]'``, each with its own
     Runtime API port (its ClientApps talk to it there) and its own ``FLWR_HOME``;
  3. a connection for the Flower CLI in ``<out-dir>/.flwr/config.toml`` and
     ``flwr run <project> fedhar-deploy --stream --run-config <out-dir>/run_config.toml``;
     the run's final status is read back from ``flwr list fedhar-deploy --format json``
     (``--stream`` exits 0 even when the ServerApp fails);
  4. every process it started (SuperLink, its SuperExec and ServerApp, the SuperNodes,
     their SuperExecs and ClientApps, ``flwr run``) stopped by process id when the run ends,
     fails, or on Ctrl-C / SIGTERM. Logs: ``<out-dir>/logs/`` (superlink.log,
     supernode-P.log, flwr-run.log).

``LocalDeployment`` is the same machinery as an object, for fault tests
(tests/test_deploy.py, simulations/deploy_faults.py): kill or restart a SuperNode, kill the
ServerApp, submit again with ``resume``. docs/deployment.md has the commands by hand, TLS
and SuperNode authentication.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psutil

from fedhar.errors import FedharError
from fedhar.interrupt import interrupt_on_sigterm
from simulations.config import FLConfig
from simulations.flwr_launch import (
    COMPLETED,
    app_environment,
    free_port,
    local_superlink,
    project_dir,
    run_status,
    stop_tree,
    stop_trees,
    toml_value,
    write_run_config,
)
from simulations.out_dir import releases_out_dir
from simulations.startup import prepare_run

CONNECTION = "fedhar-deploy"  # the Flower CLI connection name in <out-dir>/.flwr/config.toml
FINISHED = "finished:"


@dataclass
class SuperNode:
    partition: int
    port: int  # its Runtime API (ClientApp <-> SuperNode)
    data_dir: str
    log_path: Path
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Submission:
    """A ``flwr run --stream`` in progress: its output lines, and the run id once known."""

    proc: subprocess.Popen
    log_path: Path
    stream: object = None
    lines: list[str] = field(default_factory=list)
    run_id: str | None = None
    _reader: threading.Thread | None = None

    def start_reading(self) -> None:
        def read():
            with open(self.log_path, "a") as log:
                for line in self.proc.stdout:
                    self.lines.append(line)
                    log.write(line)
                    log.flush()
                    if self.run_id is None and (m := re.search(r"started run (\d+)", line)):
                        self.run_id = m.group(1)
                    if self.stream is not None:
                        self.stream.write(line)
                        self.stream.flush()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def output(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float | None = None) -> int:
        """Wait (polling, so that Ctrl-C gets through) until ``flwr run --stream`` exits."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.proc.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise FedharError(f"`flwr run` still running after {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.3)
        self._reader.join(timeout=10)
        return self.proc.returncode


class LocalDeployment:
    """A SuperLink and one SuperNode per partition on loopback; a context manager that stops
    every process it started on exit (normal, exception, KeyboardInterrupt)."""

    def __init__(self, out_dir: Path, n_nodes: int, data_dirs: dict[int, str] | None = None, stream=None,
                 startup_timeout: float = 60.0):
        self.out_dir = Path(out_dir).resolve()
        self.logs = self.out_dir / "logs"
        self.flwr_home = self.out_dir / ".flwr"
        self.stream = stream
        self.startup_timeout = startup_timeout
        self.superlink_port = free_port()
        # FLWR_LOCAL_* only matter to the Flower CLI's "local" connection, which is not used here
        self.env = app_environment(self.flwr_home, self.superlink_port, free_port())
        data_dirs = data_dirs or {}
        self.nodes = {pid: SuperNode(pid, free_port(), str(data_dirs.get(pid, "")),
                                     self.logs / f"supernode-{pid}.log") for pid in range(n_nodes)}
        self.superlink: subprocess.Popen | None = None
        self.submissions: list[Submission] = []
        self._stack = ExitStack()

    # ---- processes -----------------------------------------------------------------------
    def __enter__(self) -> LocalDeployment:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        try:
            self.superlink = self._stack.enter_context(local_superlink(
                self.env, self.flwr_home, self.startup_timeout, simulation=False,
                log_path=self.logs / "superlink.log"))
            self.write_connection()
            for pid in self.nodes:
                self.start_node(pid)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.superlink_port}"

    def write_connection(self) -> Path:
        """The Flower CLI's connection to this SuperLink (``flwr run . fedhar-deploy``)."""
        path = self.flwr_home / "config.toml"
        path.write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n'
                        f'[superlink.{CONNECTION}]\naddress = "{self.address}"\ninsecure = true\n')
        return path

    def node_config(self, pid: int) -> str:
        node = self.nodes[pid]
        items = {"partition-id": pid, "num-partitions": len(self.nodes)}
        if node.data_dir:
            items["data-dir"] = node.data_dir
        return " ".join(f"{k}={toml_value(v)}" for k, v in items.items())

    def supernode_command(self, pid: int) -> list[str]:
        return ["flower-supernode", "--insecure", "--superlink", self.address,
                "--node-config", self.node_config(pid), "--host", "127.0.0.1", "--port", str(self.nodes[pid].port)]

    def start_node(self, pid: int) -> SuperNode:
        """Start (or restart, with the same partition and a new node id) partition ``pid``'s SuperNode."""
        node = self.nodes[pid]
        if node.running:
            raise FedharError(f"the SuperNode of partition {pid} is already running (pid {node.proc.pid})")
        env = dict(self.env, FLWR_HOME=str(self.flwr_home / f"supernode-{pid}"))
        node.starts += 1
        with open(node.log_path, "a") as log:
            log.write(f"\n=== start {node.starts}: {' '.join(self.supernode_command(pid))}\n")
            log.flush()
            node.proc = subprocess.Popen(self.supernode_command(pid), env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return node

    def kill_node(self, pid: int, sig: int = signal.SIGKILL) -> None:
        """Kill partition ``pid``'s SuperNode and what it started (SuperExec, ClientApps) with ``sig``:
        SIGKILL is a crash (the SuperLink notices only when its heartbeats stop), SIGTERM a
        graceful stop (it deactivates and unregisters itself)."""
        node = self.nodes[pid]
        if not node.running:
            return
        if sig == signal.SIGTERM:
            stop_tree(node.proc)
        else:
            family = [root := psutil.Process(node.proc.pid), *root.children(recursive=True)]
            for p in family:
                try:
                    p.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(family, timeout=10)
        node.proc.wait(timeout=10)

    def server_app_processes(self) -> list[psutil.Process]:
        """The ServerApp process(es) the SuperLink's SuperExec started (``flwr-serverapp``)."""
        if self.superlink is None:
            return []
        try:
            procs = psutil.Process(self.superlink.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = []
        for p in procs:
            try:
                if any("flwr-serverapp" in part for part in p.cmdline()[:2]):
                    found.append(p)
            except psutil.NoSuchProcess:
                pass
        return found

    def kill_server_app(self) -> int:
        """Kill the running ServerApp (SIGKILL: a crash of the server's process); how many were
        killed. It is the SuperLink's SuperExec's child, which reaps it: not waited for here."""
        procs = self.server_app_processes()
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return len(procs)

    def stop(self) -> None:
        """Stop every process started here (by process id), SuperNodes first, then the SuperLink."""
        with _signals_deferred():
            stop_trees([s.proc for s in self.submissions if s.proc.poll() is None], grace=5)
            stop_trees([n.proc for n in self.nodes.values() if n.proc is not None])  # all at once
            self._stack.close()  # the SuperLink, its SuperExec and ServerApp

    # ---- runs ----------------------------------------------------------------------------
    def submit(self, run_config: Path) -> Submission:
        """``flwr run <project> fedhar-deploy --stream --run-config <toml>``, followed in a thread."""
        command = ["flwr", "run", str(project_dir()), CONNECTION, "--stream", "--run-config", str(run_config)]
        if self.stream is not None:
            print("fedhar: " + " ".join(command), file=self.stream, flush=True)
        proc = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sub = Submission(proc, self.logs / "flwr-run.log", self.stream)
        self.submissions.append(sub)
        sub.start_reading()
        return sub

    def status(self, run_id: str) -> dict:
        return run_status(self.env, run_id, CONNECTION)

    def wait_finished(self, run_id: str, timeout: float = 120.0) -> dict:
        """The run's status once it is finished:* (a killed ServerApp is noticed by the SuperLink late)."""
        deadline = time.monotonic() + timeout
        while not (status := self.status(run_id))["status"].startswith(FINISHED):
            if time.monotonic() > deadline:
                return status
            time.sleep(1)
        return status


@contextmanager
def _signals_deferred():
    """Ctrl-C / SIGTERM while stopping are remembered, not raised, so the stop completes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    old = {s: signal.signal(s, lambda signum, _: received.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if received:
            raise KeyboardInterrupt(f"signal {received[0]}")


def prepare(cfg: FLConfig, n_nodes: int) -> FLConfig:
    """Absolute paths, the backbone pretrained (cached) here, and the node count checked."""
    cfg, n_clients = prepare_run(cfg)
    if n_nodes != n_clients:
        raise FedharError(f"--nodes {n_nodes}: this configuration has {n_clients} clients "
                          f"({cfg.partition} partition of {cfg.data}); start one SuperNode per client")
    return cfg


@releases_out_dir
def run_local(cfg: FLConfig, n_nodes: int, data_dirs: dict[int, str] | None = None, stream=None,
              timeout: float | None = None) -> Path:
    """Run ``cfg`` on a local deployment of ``n_nodes`` SuperNodes; returns the out-dir, raises
    FedharError unless the run completed. ``data_dirs``: partition -> that SuperNode's data-dir
    (default: the run's data-dir, if any)."""
    stream = stream or sys.stdout
    cfg = prepare(cfg, n_nodes)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_config = write_run_config(cfg, out_dir / "run_config.toml")
    dirs = {pid: (data_dirs or {}).get(pid, cfg.data_dir) for pid in range(n_nodes)}
    t0 = time.perf_counter()
    with interrupt_on_sigterm(), LocalDeployment(out_dir, n_nodes, dirs, stream) as dep:
        print(f"fedhar deploy: SuperLink on {dep.address} (pid {dep.superlink.pid}), {n_nodes} SuperNodes "
              f"(runtime ports {', '.join(str(n.port) for n in dep.nodes.values())}); logs in {dep.logs}",
              file=stream, flush=True)
        sub = dep.submit(run_config)
        sub.wait(timeout)
        if sub.run_id is None:
            raise FedharError(f"`flwr run` did not start a run:\n{sub.output()[-2000:]}")
        status = dep.wait_finished(sub.run_id)
    if status["status"] != COMPLETED:
        raise FedharError(f"run {sub.run_id} ended {status['status']} ({status.get('status-details')}); "
                          f"see {out_dir / 'logs'}")
    report(cfg, out_dir, time.perf_counter() - t0, stream)
    return out_dir


def report(cfg: FLConfig, out_dir: Path, seconds: float, stream) -> None:
    """rounds.csv, as ``fedhar fl`` prints it, and what failed."""
    from simulations.run import report as print_rounds

    clients = pd.read_csv(out_dir / "clients.csv") if (out_dir / "clients.csv").exists() else pd.DataFrame()
    bad = clients[~clients["status"].isin(["ok"])] if "status" in clients else clients.iloc[0:0]
    note = ""
    if len(bad):
        cols = [c for c in ("round", "phase", "partition_id", "node_id", "status", "error") if c in bad]
        note = "\nNot ok:\n" + bad[cols].to_string(index=False) + "\n"
    note += f"tables: {out_dir / 'rounds.csv'}, {out_dir / 'clients.csv'}; model: {out_dir / 'model'}; logs: {out_dir / 'logs'}"
    # the rounds ran in the SuperLink's ServerApp process: their lines are printed here
    print_rounds(cfg, out_dir, seconds, name="fedhar deploy", stream=stream, tables_note=note, live=False)
