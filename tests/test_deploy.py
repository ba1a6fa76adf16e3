"""fedhar on Flower's deployment engine (simulations/deploy.py, `fedhar deploy local`), and the
round loop's handling of SuperNodes that leave and rejoin (simulations/rounds.py).

Every process a test starts is on loopback and is stopped by its process id. The longer
fault scenarios (a SuperNode crashed mid-round and restarted, one stopped gracefully; the
ServerApp killed and the run resumed, compared with an uninterrupted run) take minutes on
two busy cores: simulations/deploy_faults.py runs them, results/deploy/faults.md is their
record. Here: the same code paths, smaller.
"""

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from flwr.app import Context, RecordDict
from flwr.common.config import parse_config_args
from flwr.common.constant import NUM_PARTITIONS_KEY, PARTITION_ID_KEY

from fedhar.cli import build_parser, main
from fedhar.errors import FedharError
from simulations import inline
from simulations.client_app import with_node_data
from simulations.config import FLConfig
from simulations.deploy import CONNECTION, LocalDeployment, prepare
from simulations.deploy_cli import cmd_deploy_local, parse_node_data_dirs

ROOT = Path(__file__).resolve().parents[1]


def tiny(out_dir, **changes) -> FLConfig:
    base = dict(synthetic_domains=3, synthetic_subjects=3, pretrain_epochs=1, rounds=2, local_epochs=1,
                batch_size=32, out_dir=str(out_dir))
    return FLConfig(**{**base, **changes})


def tiny_options(out_dir, *extra) -> list[str]:
    return ["--synthetic-domains", "3", "--synthetic-subjects", "3", "--pretrain-epochs", "1", "--batch-size", "32",
            "--out-dir", str(out_dir), *extra]


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _command(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline()[:3])
    except psutil.Error:  # gone, or a zombie
        return ""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_by_pid(pids) -> None:
    """Last-resort cleanup of processes this test started (by id, never by name)."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


# ---- no processes ----------------------------------------------------------------------

def test_nodes_must_equal_the_clients_of_the_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(FedharError, match="--nodes 2: this configuration has 3 clients"):
        prepare(tiny(tmp_path / "run"), 2)


def test_each_supernode_is_told_its_partition_and_data_and_the_cli_its_superlink(tmp_path):
    import tomllib

    from flwr.cli.flower_config import parse_superlink_connection

    dep = LocalDeployment(tmp_path, 3, {1: "/data/with space/node-1"})
    command = dep.supernode_command(1)
    assert command[:4] == ["flower-supernode", "--insecure", "--superlink", dep.address]
    assert dep.address.startswith("127.0.0.1:")
    config = parse_config_args([command[command.index("--node-config") + 1]])
    assert config == {"partition-id": 1, "num-partitions": 3, "data-dir": "/data/with space/node-1"}
    assert "data-dir" not in parse_config_args([dep.node_config(0)])
    ports = [dep.superlink_port, *(n.port for n in dep.nodes.values())]
    assert len(set(ports)) == 4  # the SuperLink's and every SuperNode's runtime port differ
    dep.flwr_home.mkdir(parents=True)
    toml = tomllib.loads(dep.write_connection().read_text())
    connection = parse_superlink_connection(toml["superlink"][CONNECTION], CONNECTION)
    assert connection.address == dep.address and connection.insecure


def test_a_supernodes_data_dir_replaces_the_runs_and_must_exist(tmp_path):
    cfg = FLConfig(data_dir="/somewhere/else")
    assert with_node_data(cfg, {"partition-id": 0}) is cfg
    assert with_node_data(cfg, {"data-dir": str(tmp_path)}).data_dir == str(tmp_path)
    missing = tmp_path / "no-such-dir"
    with pytest.raises(FedharError, match=f"data-dir {re.escape(str(missing))} .*does not exist"):
        with_node_data(cfg, {"data-dir": str(missing)})
    (tmp_path / "a-file").write_text("")
    with pytest.raises(FedharError, match="is not a directory"):
        with_node_data(cfg, {"data-dir": str(tmp_path / "a-file")})


def test_fedhar_deploy_local_takes_every_fl_option():
    args = build_parser().parse_args(["deploy", "local", "--nodes", "3", "--rounds", "4", "--strategy", "fedprox",
                                      "--node-data-dir", "2=/tmp/x", "--no-resume"])
    assert args.run is cmd_deploy_local and args.nodes == 3 and args.rounds == 4 and args.strategy == "fedprox"
    fl_options = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["fl"]._actions}
    deploy = build_parser()._subparsers._group_actions[0].choices["deploy"]
    local = deploy._subparsers._group_actions[0].choices["local"]
    simulation_only = {"engine", "address", "cohort_size", "cpus_per_client", "seeds"}
    assert fl_options - simulation_only <= {a.dest for a in local._actions}
    assert parse_node_data_dirs(["2=/tmp/x"]) == {2: "/tmp/x"}
    with pytest.raises(FedharError, match="PID=DIR"):
        parse_node_data_dirs(["/tmp/x"])


# ---- the round loop with nodes leaving and rejoining (inline engine, no processes) ----

class ChurnGrid(inline.InlineGrid):
    """An inline grid where partition ``pid``'s node disconnects after round ``leave_after``
    (get_node_ids no longer lists it, as the SuperLink's once its heartbeats stop) and comes
    back after round ``rejoin_after`` under a new node id (a restarted SuperNode)."""

    NEW_ID_OFFSET = 2_000_000

    def __init__(self, *args, pid: int, leave_after: int, rejoin_after: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.pid, self.leave_after, self.rejoin_after = pid, leave_after, rejoin_after
        self.last = (0, "")  # (round, type) of the last train/evaluate message pushed
        self.sent_to_absent = 0
        self.gone: Context | None = None
        self.rejoined = False

    def push_messages(self, messages):
        messages = list(messages)
        for m in messages:
            if m.metadata.message_type in ("train", "evaluate"):
                self.last = (int(m.content["config"]["server-round"]), m.metadata.message_type)
            self.sent_to_absent += m.metadata.dst_node_id not in self.contexts
        return super().push_messages(messages)

    def get_node_ids(self):
        if self.last == (self.leave_after, "evaluate") and self.gone is None:
            self.gone = self.contexts.pop(inline.node_id_of(self.pid))
        if self.last == (self.rejoin_after, "evaluate") and not self.rejoined:
            new_id = self.NEW_ID_OFFSET + self.pid
            self.contexts[new_id] = Context(run_id=self.gone.run_id, node_id=new_id, state=RecordDict(),
                                            node_config={PARTITION_ID_KEY: self.pid, NUM_PARTITIONS_KEY: 3},
                                            run_config=self.gone.run_config)
            self.rejoined = True
        return super().get_node_ids()


@pytest.mark.slow
def test_an_offline_node_is_skipped_and_a_restarted_one_rejoins(tmp_path, monkeypatch):
    from simulations.run import run_inprocess

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    grids = []

    def churn_grid(*args, **kwargs):
        grids.append(ChurnGrid(*args, pid=1, leave_after=1, rejoin_after=2, **kwargs))
        return grids[-1]

    monkeypatch.setattr(inline, "InlineGrid", churn_grid)
    out = run_inprocess(tiny(tmp_path / "run", rounds=3), engine="inline")
    rounds, clients = pd.read_csv(out / "rounds.csv"), pd.read_csv(out / "clients.csv")
    assert list(rounds["clients_trained"]) == [3, 2, 3]
    assert grids[0].sent_to_absent == 0  # nothing was sent to the node while it was away
    p1 = clients[clients["partition_id"] == 1].set_index(["round", "phase"])
    assert p1.loc[(2, "train"), "status"] == "offline" and p1.loc[(2, "evaluate"), "status"] == "offline"
    assert "not connected" in p1.loc[(2, "train"), "error"]
    assert p1.loc[(2, "train"), "node_id"] == inline.node_id_of(1)
    # back under its new node id, found by the QUERY before round 3, trains and evaluates again
    assert p1.loc[(3, "train"), "status"] == "ok" and p1.loc[(3, "evaluate"), "status"] == "ok"
    assert p1.loc[(3, "train"), "node_id"] == ChurnGrid.NEW_ID_OFFSET + 1
    assert (clients[clients["partition_id"] != 1]["status"] == "ok").all()


# ---- a real local deployment: SuperLink + 3 SuperNodes --------------------------------

@pytest.mark.slow
@pytest.mark.long  # about 2 min (test_sigterm_mid_run_stops_every_process_it_started starts the same deployment)
@pytest.mark.timeout(900)
def test_three_supernodes_two_rounds_one_without_its_data(tmp_path, capsys):
    """(i) a 3-node deployment runs 2 rounds, writes its tables and leaves no process or port
    behind; (iii) the node pointed at a missing data directory fails with a message naming
    it, recorded in clients.csv, while the other two train."""
    before = _descendants()
    missing = tmp_path / "node-2-data"
    out = tmp_path / "run"
    try:
        code = main(["deploy", "local", "--nodes", "3", *tiny_options(out, "--rounds", "2", "--round-timeout",
                                                                          "300", "--node-data-dir", f"2={missing}")])
    finally:
        text = capsys.readouterr().out
        print(text)
    assert code == 0
    assert "fedhar deploy: finished" in text
    rounds, clients = pd.read_csv(out / "rounds.csv"), pd.read_csv(out / "clients.csv")
    assert list(rounds["round"]) == [1, 2] and list(rounds["clients_trained"]) == [2, 2]
    p2 = clients[clients["partition_id"] == 2]
    assert set(p2["status"]) == {"failed"} and set(p2["phase"]) == {"train", "evaluate"}
    assert p2["error"].str.contains(f"data-dir {missing} (this SuperNode's --node-config) does not exist",
                                    regex=False).all()
    assert (clients[clients["partition_id"].isin([0, 1])]["status"] == "ok").all()
    assert sorted(p.name for p in (out / "logs").iterdir()) == [
        "flwr-run.log", "superlink.log", "supernode-0.log", "supernode-1.log", "supernode-2.log"]
    # every process stopped, every port closed
    assert _descendants() <= before
    ports = [int(p) for p in re.findall(r"SuperLink on 127\.0\.0\.1:(\d+)", text)]
    ports += [int(p) for p in re.search(r"runtime ports ([\d, ]+)\)", text).group(1).split(", ")]
    assert len(ports) == 4 and not any(_listening(p) for p in ports)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_mid_run_stops_every_process_it_started(tmp_path):
    """`fedhar deploy local` terminated during round 1: SuperLink, SuperExecs, ServerApp,
    SuperNodes, ClientApps and `flwr run` are all gone, by their process ids."""
    out = tmp_path / "run"
    # FEDHAR_VERBOSE: Flower's INFO log ("[ROUND 1/3]", awaited below) is shown only when verbose
    env = {**__import__("os").environ, "FEDHAR_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "FEDHAR_VERBOSE": "1"}
    command = [sys.executable, "-m", "fedhar", "deploy", "local", "--nodes", "3",
               *tiny_options(out, "--rounds", "3", "--round-timeout", "300")]
    with open(tmp_path / "cli.log", "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 400
        parts = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp", "bin/flwr run")
        while True:  # the run is under way once every kind of process it starts is running
            assert proc.poll() is None, (tmp_path / "cli.log").read_text()
            assert time.monotonic() < deadline, "the run did not start"
            family = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
            names = " ".join(_command(p) for p in family)
            if all(part in names for part in parts):
                break
            time.sleep(0.2)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 130
        stopped_in = time.monotonic() - t0
        alive = [p for p in family if _alive(p)]
        assert not alive, f"left running: {alive}"
        assert "fedhar: interrupted" in (tmp_path / "cli.log").read_text()
        print(f"stopped {len(family)} processes in {stopped_in:.1f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_by_pid(family)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_secagg_on_three_supernodes_with_one_dropping_mid_round(tmp_path, capsys):
    """`fedhar deploy local --secagg`: SecAgg+ between real SuperNodes; partition 1 shares its
    keys, then fails while training (--inject-failure 1:1): the others' shares unmask the sum
    and the round completes with the 2 others (about 2 min on two busy cores)."""
    before = _descendants()
    out = tmp_path / "run"
    try:
        code = main(["deploy", "local", "--nodes", "3", *tiny_options(out, "--rounds", "1", "--round-timeout", "300",
                                                                          "--secagg", "--inject-failure", "1:1")])
    finally:
        text = capsys.readouterr().out
        print(text)
    assert code == 0 and "fedhar deploy: finished" in text
    rounds, clients = pd.read_csv(out / "rounds.csv"), pd.read_csv(out / "clients.csv")
    assert list(rounds["clients_trained"]) == [2] and list(rounds["failed"]) == [1]
    train = clients[clients["phase"] == "train"].set_index(["round", "partition_id"])
    assert train.loc[(1, 1), "status"] == "failed" and "client 1 fails in round 1" in train.loc[(1, 1), "error"]
    assert (clients[clients["phase"] == "evaluate"]["status"] == "ok").all()
    aggregate = clients[clients["phase"] == "aggregate"]  # SecAgg+ summed and unmasked the 2 masked updates
    assert list(aggregate["status"]) == ["ok"] and list(aggregate["secagg_clients"]) == [2]
    bytes_up = clients[(clients["phase"] == "train") & (clients["status"] == "ok")]["bytes_sent"]
    bytes_down = clients[(clients["phase"] == "train") & (clients["status"] == "ok")]["bytes_received"]
    assert (bytes_up > 1.9 * bytes_down).all()  # what went up: 64-bit masked integers, not float32 tensors
    assert json.loads((out / "config.json").read_text())["privacy"]["secure_aggregation"]["threshold"] == 0.5
    assert _descendants() <= before
