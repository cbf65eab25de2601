"""One-command local deployment: PostgreSQL (Airflow's metadata database and MLflow's backend store, one server),
an Airflow API server, scheduler (LocalExecutor) and DAG processor, all under one folder, all on 127.0.0.1.

    python infra/airflow/local_stack.py up   [--dir .recpipe/airflow-local] [--pg-port 5433] [--api-port 8793]
                                             [--backfills-only]
    python infra/airflow/local_stack.py env  [--dir ...]     # `export ...` lines for airflow / recpipe commands
    python infra/airflow/local_stack.py down [--dir ...]     # stops everything `up` started

(`make airflow` runs `up`.) PostgreSQL comes from Debian (`apt-get install postgresql`; its binaries live in
/usr/lib/postgresql/<version>/bin, found there). Run as root, the database cluster is owned by the ``postgres`` user
(PostgreSQL refuses to run as root) and lives in a /tmp folder that user can reach; its path is kept in
``<dir>/stack.json``. Nothing listens beyond 127.0.0.1; the database trusts local connections only, which is
fine for one machine and wrong for anything shared (use a managed PostgreSQL and the production manifests in
``infra/`` there).

Standard library only (psycopg2, from the lock, for creating the two databases), so ``airflow`` and ``recpipe``
are the venv's. The integration test ``tests/dags/test_scheduler.py`` drives this same module.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROCESSES = ("api-server", "scheduler", "dag-processor")
# The LocalExecutor forks every task from the scheduler, so libraries the scheduler has loaded are already in a
# task's memory: loaded once here, they save each task about 3 s of CPU it would spend importing them (42 tasks for
# three days). Nothing is started by importing them (no JVM, no thread pool), so forking after them is safe.
PRELOAD = ("numpy", "pandas", "pyarrow.dataset", "torch", "pyspark.sql", "mlflow", "great_expectations",
           "transformers.models.llama.modeling_llama", "pipelines.runner")
_PRELOADED = ("import importlib, sys\n"
              "for m in sys.argv[1].split(','):\n    importlib.import_module(m)\n"
              "sys.argv = ['airflow', 'scheduler']\n"
              "from airflow.__main__ import main\nmain()")
DATABASES = ("airflow", "mlflow")
USER = "recpipe"


def pg_bin(name: str) -> str:
    """A PostgreSQL binary: on PATH, else the newest Debian install."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise SystemExit(f"PostgreSQL's {name} was not found on PATH or in /usr/lib/postgresql/*/bin: install it "
                         "(Debian: apt-get install postgresql)")
    return candidates[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalStack:
    def __init__(self, root: Path, pg_port: int | None = None, api_port: int | None = None,
                 parallelism: int = 2, extra_env: dict[str, str] | None = None,
                 preload: tuple[str, ...] = PRELOAD) -> None:
        self.root = root.resolve()
        self.state_file = self.root / "stack.json"
        state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.pg_port = pg_port or state.get("pg_port") or free_port()
        self.api_port = api_port or state.get("api_port") or free_port()
        self.jwt_secret = state.get("jwt_secret") or secrets.token_hex(24)
        self.pgdata = Path(state["pgdata"]) if state.get("pgdata") else None
        self.pids: dict[str, int] = state.get("pids", {})
        self.parallelism = parallelism
        self.extra_env = dict(extra_env or {})
        self.preload = preload  # modules the scheduler loads before it forks tasks (empty: plain `airflow scheduler`)

    # ------------------------------------------------------------------ state
    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps({"pg_port": self.pg_port, "api_port": self.api_port,
                                               "jwt_secret": self.jwt_secret, "pids": self.pids,
                                               "pgdata": str(self.pgdata) if self.pgdata else None}, indent=1))
        self.state_file.chmod(0o600)  # holds the JWT secret

    def db_url(self, db: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{USER}@127.0.0.1:{self.pg_port}/{db}"

    def env(self) -> dict[str, str]:
        """What every airflow process and recpipe command of this deployment needs."""
        # PATH is left as it is: the processes are started by absolute path, and a PATH with the venv's bin first would
        # give DeepSpeed's just-in-time builds another ninja, which rebuilds its ops for every other caller
        return {
            "AIRFLOW_HOME": str(self.root / "airflow"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.db_url("airflow"),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": self.jwt_secret,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "1200",
            "RECPIPE_HOME": os.environ.get("RECPIPE_HOME") or str(self.root / "home"),
            "RECPIPE_MLFLOW_TRACKING_URI": self.db_url("mlflow"),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "GX_ANALYTICS_ENABLED": "false",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            **self.extra_env,
        }

    def full_env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        return {**base, **self.env()}

    # ------------------------------------------------------------------ PostgreSQL
    def _pg_user(self):
        """Run PostgreSQL as ``postgres`` (or ``nobody``) when we are root; as ourselves otherwise."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise SystemExit("running as root, but there is no 'postgres' or 'nobody' user to run PostgreSQL as")

    def _as_pg(self, args: list[str], **kw) -> subprocess.CompletedProcess:
        user = self._pg_user()

        def drop() -> None:
            if user is not None:
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)

        return subprocess.run(args, preexec_fn=drop, capture_output=True, text=True, **kw)

    def start_postgres(self) -> None:
        user = self._pg_user()
        if self.pgdata is None or not (self.pgdata / "PG_VERSION").exists():
            if user is not None:  # a folder the postgres user can reach, whatever the permissions above ours
                self.pgdata = Path(tempfile.mkdtemp(prefix="recpipe-pg-"))
                os.chown(self.pgdata, user.pw_uid, user.pw_gid)
            else:
                self.pgdata = self.root / "pgdata"
                self.pgdata.mkdir(parents=True, exist_ok=True)
            self._save()
            p = self._as_pg([pg_bin("initdb"), "-D", str(self.pgdata), "-U", USER, "--auth=trust", "-E", "UTF8",
                             "--no-instructions"], timeout=120)
            if p.returncode:
                raise SystemExit(f"initdb failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        p = self._as_pg([pg_bin("pg_ctl"), "-D", str(self.pgdata), "-l", str(self.pgdata / "server.log"), "-w",
                         "-t", "60", "-o", f"-p {self.pg_port} -k {self.pgdata} -c listen_addresses=127.0.0.1",
                         "start"], timeout=90)
        if p.returncode:
            log = (self.pgdata / "server.log")
            raise SystemExit(f"pg_ctl start failed:\n{p.stderr[-2000:]}\n"
                             f"{log.read_text()[-2000:] if log.exists() else ''}")
        import psycopg2

        con = psycopg2.connect(host="127.0.0.1", port=self.pg_port, user=USER, dbname="postgres")
        con.autocommit = True
        with con.cursor() as cur:
            for db in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{db}"')
        con.close()

    def stop_postgres(self) -> None:
        if self.pgdata is not None and (self.pgdata / "postmaster.pid").exists():
            self._as_pg([pg_bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"], timeout=90)

    # ------------------------------------------------------------------ Airflow
    def airflow(self, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        airflow = str(Path(sys.executable).with_name("airflow"))
        p = subprocess.run([airflow, *args], cwd=REPO, env=self.full_env(), capture_output=True, text=True,
                           timeout=timeout)
        if p.returncode:
            raise RuntimeError(f"airflow {' '.join(args)} failed (exit {p.returncode}):\n{p.stdout[-3000:]}\n"
                               f"{p.stderr[-3000:]}")
        return p

    def start_airflow(self) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.airflow("db", "migrate")
        self.airflow("pools", "import", str(REPO / "infra" / "airflow" / "pools.json"))
        airflow = str(Path(sys.executable).with_name("airflow"))
        for name in PROCESSES:
            if self._alive(self.pids.get(name)):
                continue
            log = (self.root / "logs" / f"{name}.log").open("ab")
            cmd = [sys.executable, "-c", _PRELOADED, ",".join(self.preload)] if name == "scheduler" and \
                self.preload else [airflow, name]
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.full_env(), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            self.pids[name] = proc.pid
            self._save()
        self._wait_api()

    def _wait_api(self, timeout: float = 180) -> None:
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health", timeout=5):
                    return
            except OSError:
                if not self._alive(self.pids.get("api-server")):
                    break
                time.sleep(2)
        log = self.root / "logs" / "api-server.log"
        raise RuntimeError(f"the API server did not answer on 127.0.0.1:{self.api_port}:\n"
                           f"{log.read_text()[-3000:] if log.exists() else ''}")

    @staticmethod
    def _alive(pid: int | None) -> bool:
        """Whether ``pid`` still runs (a child that exited is reaped here, so it is not mistaken for alive)."""
        if not pid:
            return False
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return False
        except ChildProcessError:  # not our child (`down` from another shell): ask the kernel
            pass
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def stop_airflow(self, grace_s: float = 30) -> None:
        for name in reversed(PROCESSES):  # SIGTERM the whole session: the processes' children go too
            pid = self.pids.get(name)
            if self._alive(pid):
                try:
                    os.killpg(pid, signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.time() + grace_s
        while time.time() < deadline and any(self._alive(p) for p in self.pids.values()):
            time.sleep(0.5)
        for pid in self.pids.values():
            if self._alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
        self.pids = {}
        self._save()

    # ------------------------------------------------------------------ whole
    def up(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._save()
        self.start_postgres()
        self.start_airflow()

    def down(self, remove_data: bool = False) -> None:
        self.stop_airflow()
        self.stop_postgres()
        if remove_data and self.pgdata is not None and str(self.pgdata).startswith(tempfile.gettempdir()):
            shutil.rmtree(self.pgdata, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["up", "down", "env"])
    p.add_argument("--dir", default=".recpipe/airflow-local", help="where the stack keeps its state and logs")
    p.add_argument("--pg-port", type=int, default=None)
    p.add_argument("--api-port", type=int, default=None)
    p.add_argument("--parallelism", type=int, default=2, help="tasks at once (LocalExecutor)")
    p.add_argument("--backfills-only", action="store_true",
                   help="the scheduler runs backfills and triggered runs only, no scheduled days (no catch-up of "
                        "nightly_refresh from its start date when it is unpaused): for trying the stack out")
    p.add_argument("--no-preload", action="store_true",
                   help="start the scheduler as plain `airflow scheduler`, without loading numpy, torch, Spark's "
                        "and MLflow's Python side first (each task then imports them itself)")
    args = p.parse_args(argv)
    extra = {"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"} if args.backfills_only else {}
    stack = LocalStack(Path(args.dir), args.pg_port, args.api_port, args.parallelism, extra,
                       () if args.no_preload else PRELOAD)
    if args.action == "env":
        print("\n".join(f"export {k}='{v}'" for k, v in stack.env().items()))
        return 0
    if args.action == "down":
        stack.down()
        print(f"stopped the Airflow processes and PostgreSQL of {stack.root}")
        return 0
    stack.up()
    print(f"up: PostgreSQL on 127.0.0.1:{stack.pg_port} (databases {', '.join(DATABASES)}), Airflow API on "
          f"http://127.0.0.1:{stack.api_port}, scheduler and DAG processor; logs in {stack.root / 'logs'}\n"
          f"next: eval \"$(python {Path(__file__).relative_to(REPO)} env --dir {args.dir})\"; "
          "airflow dags unpause nightly_refresh; airflow backfill create --dag-id nightly_refresh "
          "--from-date 2026-01-01 --to-date 2026-01-03")
    return 0


if __name__ == "__main__":
    sys.exit(main())
