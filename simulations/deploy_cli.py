"""`fedhar deploy local`: a federated run on Flower's deployment engine, all on this machine.

Every ``fedhar fl`` option (the FLConfig fields) is an option here too.
"""

from __future__ import annotations

from pathlib import Path

EPILOG = """\
What runs (all on 127.0.0.1, free ports, stopped when the run ends, fails or on Ctrl-C):
  flower-superlink (deployment engine, --insecure), one flower-supernode per client with
  --node-config 'partition-id=P num-partitions=N [data-dir="DIR"]', then
  flwr run <project> fedhar-deploy --stream --run-config OUT_DIR/run_config.toml.
Logs: OUT_DIR/logs/. By hand, with TLS or SuperNode authentication: docs/deployment.md.
"""


def register(commands) -> None:
    from simulations.cli import add_config_options  # every `fedhar fl` option

    p = commands.add_parser(
        "deploy", help="run the federation on Flower's deployment engine (SuperLink + SuperNodes)",
        description="Run the fedhar Flower app on real SuperLink / SuperNode processes.")
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    q = targets.add_parser(
        "local", help="a SuperLink and one SuperNode per client on this machine (loopback)",
        description="Start a SuperLink (deployment mode) and --nodes SuperNodes on loopback, submit the "
        "run with `flwr run`, follow it, report rounds.csv, stop everything.",
        epilog=EPILOG)
    q.add_argument("--nodes", type=int, required=True,
                   help="SuperNodes to start: must equal the number of clients the configuration defines")
    q.add_argument("--node-data-dir", action="append", default=[], metavar="PID=DIR",
                   help="data directory of partition PID's SuperNode (its --node-config data-dir); "
                   "repeatable; default: --data-dir")
    q.add_argument("--timeout", type=float, default=None,
                   help="give up (and stop everything) if the run takes longer than this many seconds")
    add_config_options(q)
    q.set_defaults(run=cmd_deploy_local)


def parse_node_data_dirs(items: list[str]) -> dict[int, str]:
    from fedhar.errors import FedharError

    dirs = {}
    for item in items:
        pid, sep, path = item.partition("=")
        if not sep or not pid.strip().isdigit() or not path:
            raise FedharError(f"--node-data-dir {item!r}: expected PID=DIR, e.g. 0=/data/node0")
        dirs[int(pid)] = str(Path(path).expanduser().resolve())
    return dirs


def cmd_deploy_local(args) -> int:
    from fedhar.errors import FedharError
    from simulations.cli import config_from_args
    from simulations.deploy import run_local

    cfg = config_from_args(args)
    if cfg.resume and not cfg.out_dir:
        raise FedharError("--resume needs the --out-dir of the run to continue")
    dirs = parse_node_data_dirs(args.node_data_dir)
    if bad := sorted(p for p in dirs if not 0 <= p < args.nodes):
        raise FedharError(f"--node-data-dir names partitions {bad}; there are {args.nodes} (0..{args.nodes - 1})")
    run_local(cfg, args.nodes, data_dirs=dirs, timeout=args.timeout)
    return 0
