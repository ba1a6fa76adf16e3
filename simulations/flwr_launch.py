"""Run the fedhar app with Flower's own CLI, ``flwr run .``, and report honestly whether it worked.

``flwr run . local --stream`` alone has three traps (see README, "Running with flwr run"):
it starts a detached local SuperLink that outlives the command, that SuperLink installs the
app's dependencies into a fresh per-run environment (GBs of torch) unless
``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` is in its environment when it starts, and
``--stream`` exits 0 even when the ServerApp fails. This launcher:

  1. starts its own SuperLink (simulation mode, loopback, free ports, its own ``FLWR_HOME``)
     with the right environment, so no stray daemon or foreign configuration is involved;
  2. writes the run configuration to ``<out-dir>/run_config.toml`` with every path made
     absolute (the app runs from an installed copy of the project, in another directory);
  3. calls ``flwr run <project> local --stream`` with as many simulated SuperNodes as the
     configuration has clients, then reads the run's final status from
     ``flwr list --format json`` and fails unless it is ``finished:completed``;
  4. stops the SuperLink and everything it started, also on Ctrl-C or failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

from fedhar.data import paths
from fedhar.errors import FedharError
from simulations.config import FLConfig
from simulations.out_dir import releases_out_dir
from simulations.startup import gpus_per_client, prepare_run

COMPLETED = "finished:completed"


def project_dir() -> Path:
    """The checkout holding pyproject.toml with the Flower app section (``flwr run`` needs it)."""
    root = paths.PROJECT_ROOT
    pyproject = root / "pyproject.toml"
    if not pyproject.exists() or "[tool.flwr.app]" not in pyproject.read_text():
        raise FedharError(f"{pyproject}: no Flower app here; `flwr run` needs a fedhar checkout "
                          "(pip install -e .), not an installed wheel")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value)  # ints, floats and strings print as valid TOML


def write_run_config(cfg: FLConfig, path: Path) -> Path:
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in cfg.to_run_config().items()))
    return path


def app_environment(flwr_home: Path, http_port: int, control_port: int) -> dict:
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # never pip/uv-install torch per run
        "FLWR_TELEMETRY_ENABLED": "0",
        # the ServerApp runs from an installed copy elsewhere: hand it the caller's data search path
        "FEDHAR_DATA_DIR": os.pathsep.join(str(d.resolve()) for d, _ in paths.data_dirs()),
        "FEDHAR_CACHE_DIR": str(paths.cache_root().resolve()),
    })
    bin_dir = str(Path(sys.executable).parent)  # flower-superlink, flwr-serverapp, flwr-simulation
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def stop_tree(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a process and every process it started (SuperLink -> simulation -> Ray)."""
    stop_trees([proc], grace)


def stop_trees(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """Stop processes and every process they started, all at once (SIGTERM, then SIGKILL
    after ``grace`` seconds), by process id."""
    family = []
    for proc in procs:
        try:
            family += [root := psutil.Process(proc.pid), *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for p in family:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)


@contextmanager
def local_superlink(env: dict, flwr_home: Path, startup_timeout: float = 60.0, simulation: bool = True,
                    log_path: Path | None = None):
    """A SuperLink on loopback, started and stopped here: simulation mode, or (simulation=False)
    the deployment engine, whose SuperNodes connect to its HTTP port (Fleet, Runtime and Control
    APIs all on ``--port`` in flwr 1.41)."""
    log_path = log_path or flwr_home / "superlink.log"
    command = ["flower-superlink", "--insecure", *(["--simulation"] if simulation else []),
               "--isolation", "subprocess",
               # deprecated and unused by flwr 1.41 (Control API on --port): kept for the simulation launcher
               *(["--control-api-address", f"127.0.0.1:{env['FLWR_LOCAL_CONTROL_API_PORT']}"] if simulation else []),
               "--host", "127.0.0.1", "--port", env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"],
               "--disable-runtime-dependency-installation",
               "--database", str(flwr_home / "state.db"), "--log-file", str(log_path)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait_healthy(proc, int(env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]), startup_timeout, log_path)
        yield proc
    finally:
        stop_tree(proc)


def _wait_healthy(proc, port: int, timeout: float, log_path: Path) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FedharError(f"flower-superlink exited with {proc.returncode}; see {log_path}:\n{_tail(log_path)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise FedharError(f"flower-superlink did not become ready within {timeout:.0f} s; see {log_path}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_status(env: dict, run_id: str, connection: str | None = None) -> dict:
    """The run's row of ``flwr list [connection] --format json`` (status, status-details, elapsed, ...)."""
    command = ["flwr", "list", *([connection] if connection else []), "--format", "json"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    try:
        runs = json.loads(out.stdout)["runs"]
    except (json.JSONDecodeError, KeyError):
        raise FedharError(f"`flwr list --format json` gave no run list: {out.stdout[-500:]} {out.stderr[-500:]}") from None
    for run in runs:
        if str(run["run-id"]) == run_id:
            return run
    raise FedharError(f"run {run_id} is not in `flwr list` ({len(runs)} runs)")


@releases_out_dir
def launch(cfg: FLConfig, cpus_per_client: int = 1, stream=None) -> Path:
    """Run ``cfg`` through ``flwr run``; returns the out-dir, raises FedharError unless it completed.

    What it prints is what the other engines print: the run's line, then one line per round
    as the ServerApp finishes it. Flower's own output (its INFO / WARNING log, Ray's actor
    lines, the SuperLink's notes) goes to ``<out-dir>/.flwr/flwr_run.log``, which an error
    names; ``--verbose`` shows it as it comes, with the ``flwr run`` command and the run id."""
    from fedhar.console import verbose
    from simulations.startup import announce

    stream = stream or sys.stdout
    cfg, n_clients = prepare_run(cfg)  # one simulated SuperNode per client; the backbone's path in the run config
    out_dir = Path(cfg.out_dir)
    run_config = write_run_config(cfg, out_dir / "run_config.toml")
    flwr_home = out_dir / ".flwr"
    flwr_home.mkdir(exist_ok=True)
    log_path = flwr_home / "flwr_run.log"
    env = app_environment(flwr_home, free_port(), free_port())
    federation_config = f"num-supernodes={n_clients} client-resources-num-cpus={int(cpus_per_client)}"
    if gpus_per_client(cfg, n_clients):
        federation_config += f" client-resources-num-gpus={gpus_per_client(cfg, n_clients)}"
    announce(cfg, n_clients, "flwr", stream)
    with local_superlink(env, flwr_home):
        command = ["flwr", "run", str(project_dir()), "local", "--stream",
                   "--federation-config", federation_config, "--run-config", str(run_config)]
        if verbose():
            print("fedhar: " + " ".join(command), file=stream, flush=True)
        output, shown = _run_streaming(command, env, stream, log_path, show_all=verbose())
        match = re.search(r"started run (\d+)", output)
        if not match:
            raise FedharError(f"`flwr run` did not start a run; its output is in {log_path}:\n{output[-2000:]}")
        status = run_status(env, match.group(1))
    if status["status"] != COMPLETED:
        raise FedharError(f"flwr run {match.group(1)} ended {status['status']} ({status.get('status-details')}); "
                          f"see {log_path} and {flwr_home / 'superlink.log'}")
    _rounds_not_shown(cfg, out_dir, shown, stream)
    if verbose():
        print(f"fedhar: run {match.group(1)} {status['status']} in {status['elapsed']:.0f} s -> {out_dir}",
              file=stream, flush=True)
    return out_dir


ROUND_LINE = re.compile(r"^round (\d+)/\d+ ")  # simulations.progress.round_line, printed by the ServerApp


def _run_streaming(command: list[str], env: dict, stream, log_path: Path, show_all: bool = False
                   ) -> tuple[str, set[int]]:
    """Run a command, writing all its output to ``log_path`` and echoing its round lines (every
    line if show_all) as they come; returns all of the output and the rounds echoed."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, shown = [], set()
    try:
        with open(log_path, "a") as log:
            for line in proc.stdout:
                seen.append(line)
                log.write(line)
                log.flush()
                match = ROUND_LINE.match(line)
                if match:
                    shown.add(int(match.group(1)))
                if show_all or match:
                    stream.write(line)
                    stream.flush()
        proc.wait()
    finally:
        if proc.poll() is None:
            stop_tree(proc)
    return "".join(seen), shown


def _rounds_not_shown(cfg: FLConfig, out_dir: Path, shown: set[int], stream) -> None:
    """The line of every finished round whose line did not come through the stream (from rounds.csv)."""
    import pandas as pd

    from simulations.progress import round_line

    rounds_csv = out_dir / "rounds.csv"
    if rounds_csv.exists():
        for row in pd.read_csv(rounds_csv).to_dict("records"):
            if int(row["round"]) not in shown:
                print(round_line(row, cfg.rounds), file=stream, flush=True)


APP_CONFIG_HEADER = "[tool.flwr.app.config]"


def sync_pyproject(pyproject: Path) -> bool:
    """Rewrite pyproject's ``[tool.flwr.app.config]`` (its last section) from FLConfig's defaults.

    ``flwr run --run-config`` only overrides keys the section declares, so it must list every
    FLConfig field. Returns whether the file changed. ``python -m simulations.flwr_launch``."""
    text = pyproject.read_text()
    head, found, _ = text.partition(APP_CONFIG_HEADER)
    if not found:
        raise FedharError(f"{pyproject}: no {APP_CONFIG_HEADER} section")
    body = "".join(f"{k} = {toml_value(v)}\n" for k, v in FLConfig().to_run_config().items())
    new = head + APP_CONFIG_HEADER + "\n" + body
    pyproject.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(prog="python -m simulations.flwr_launch",
                            description="Rewrite pyproject.toml's [tool.flwr.app.config] from FLConfig's defaults (after "
                                        "a new FLConfig option), so that flwr run --run-config accepts every option."
                            ).parse_args(argv)
    changed = sync_pyproject(project_dir() / "pyproject.toml")
    print("pyproject.toml [tool.flwr.app.config] " + ("updated" if changed else "already in sync"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
