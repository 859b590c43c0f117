"""`recotem` command line: one supervisor for the embedded default, one command per process."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

STOP_GRACE_SECONDS = 15


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recotem.settings")
    import django

    django.setup()


def migrate() -> None:
    """Apply migrations and create the cache table; safe to run on every start."""
    _setup_django()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    call_command("createcachetable", verbosity=0)


def ensure_admin() -> None:
    """Create the first admin once. A generated password is printed once and never stored."""
    _setup_django()
    from django.contrib.auth import get_user_model

    username = os.environ.get("RECOTEM_ADMIN_USERNAME", "admin")
    user_model = get_user_model()
    if user_model.objects.filter(username=username).exists():
        return
    password = os.environ.get("RECOTEM_ADMIN_PASSWORD")
    generated = not password
    if not password:
        password = secrets.token_urlsafe(12)
    user_model.objects.create_superuser(username=username, email="", password=password)
    if generated:
        print(f"Created admin user {username!r} with password: {password}", flush=True)
        print("  (shown once; set RECOTEM_ADMIN_PASSWORD to choose it)", flush=True)
    else:
        print(
            f"Created admin user {username!r} (password from RECOTEM_ADMIN_PASSWORD).", flush=True
        )


def storage_ready() -> bool:
    """On S3 storage, check the bucket before starting a process; print one line if unusable.

    Local storage needs no check (and no Django start-up here, which would slow every command).
    """
    if os.environ.get("RECOTEM_STORAGE", "local") != "s3":
        return True
    _setup_django()
    from recotem.core.storagecheck import storage_problem

    problem = storage_problem()
    if problem:
        print(f"recotem: {problem}", file=sys.stderr, flush=True)
        return False
    return True


def _python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def web_command(host: str, port: int, workers: int = 1) -> list[str]:
    return _python_module(
        "uvicorn",
        "recotem.asgi:application",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--lifespan",
        "on",
    )


def worker_command(
    concurrency: int | None = None, queues: str | None = None, hostname: str | None = None
) -> list[str]:
    cmd = _python_module("celery", "-A", "recotem", "worker", "-l", "INFO")
    if concurrency:
        cmd += ["--concurrency", str(concurrency)]
    if queues:
        cmd += ["-Q", queues]
    if hostname:
        cmd += ["--hostname", hostname]
    return cmd


def beat_command() -> list[str]:
    return _python_module(
        "celery",
        "-A",
        "recotem",
        "beat",
        "-l",
        "INFO",
        "--scheduler",
        "recotem.retraining.scheduler:RetrainingScheduler",
        "--schedule",
        os.devnull,
    )


def inference_command(host: str, port: int, workers: int) -> list[str]:
    return _python_module(
        "uvicorn",
        "recotem.inference.app:application",
        "--no-access-log",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    )


class Supervisor:
    """Runs child processes; stops them all on a signal or when any one of them exits."""

    def __init__(self, commands: dict[str, list[str]]) -> None:
        self.commands = commands
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        for name, cmd in self.commands.items():
            # A new process group per child: Ctrl-C reaches only us, and we stop children in order.
            self.children[name] = subprocess.Popen(cmd, start_new_session=True)
        exit_code = 0
        while not self.stopping:
            for name, child in self.children.items():
                code = child.poll()
                if code is not None:
                    print(
                        f"recotem: the {name} process exited with code {code}; stopping the others.",
                        file=sys.stderr,
                        flush=True,
                    )
                    exit_code = 1
                    self.stopping = True
                    break
            time.sleep(0.2)
        self.stop()
        return exit_code

    def stop(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def cmd_up(args: argparse.Namespace) -> int:
    migrate()
    ensure_admin()
    commands = {
        "web": web_command(args.host, args.port),
        "worker": worker_command(args.concurrency),
        "beat": beat_command(),
    }
    print(
        f"Recotem is starting at http://{args.host}:{args.port}/ (API: /api/v1/, admin: /admin/)",
        flush=True,
    )
    return Supervisor(commands).run()


def _exec(cmd: Sequence[str]) -> int:
    os.execv(cmd[0], list(cmd))
    return 0  # pragma: no cover


def cmd_manage(args: argparse.Namespace) -> int:
    _setup_django()
    from django.core.management import execute_from_command_line

    execute_from_command_line(["recotem manage", *args.rest])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recotem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="migrate, ensure the admin user, run web + worker + beat")
    up.add_argument("--host", default=os.environ.get("RECOTEM_HOST", "127.0.0.1"))
    up.add_argument("--port", type=int, default=int(os.environ.get("RECOTEM_PORT", "8000")))
    up.add_argument(
        "--concurrency", type=int, default=None, help="worker processes (default: cores)"
    )

    web = sub.add_parser("web", help="run the ASGI web server (API, UI, admin, /inference/)")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8000)
    web.add_argument("--workers", type=int, default=1)
    web.add_argument("--migrate", action="store_true", help="apply migrations first")

    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--concurrency", type=int, default=None)
    worker.add_argument("-Q", "--queues", default=None)
    worker.add_argument(
        "-n", "--hostname", default=None, help="Celery node name (default celery@<host>)"
    )

    sub.add_parser("beat", help="run Celery beat with the database scheduler")

    inference = sub.add_parser("inference", help="run only the inference API")
    inference.add_argument("--host", default="127.0.0.1")
    inference.add_argument("--port", type=int, default=8001)
    inference.add_argument("--workers", type=int, default=1)

    sub.add_parser("migrate", help="apply database migrations and ensure the admin user")
    sub.add_parser("reconcile", help="repair drift between schedules and beat's periodic tasks")

    manage = sub.add_parser("manage", help="run any Django management command")
    manage.add_argument("rest", nargs=argparse.REMAINDER)

    args = parser.parse_args(argv)
    if args.command in ("up", "web", "worker", "beat", "inference") and not storage_ready():
        return 2
    if args.command == "up":
        return cmd_up(args)
    if args.command == "web":
        if args.migrate:
            migrate()
        return _exec(web_command(args.host, args.port, args.workers))
    if args.command == "worker":
        return _exec(worker_command(args.concurrency, args.queues, args.hostname))
    if args.command == "beat":
        return _exec(beat_command())
    if args.command == "inference":
        return _exec(inference_command(args.host, args.port, args.workers))
    if args.command == "migrate":
        migrate()
        ensure_admin()
        return 0
    if args.command == "reconcile":
        _setup_django()
        from django.core.management import call_command

        call_command("reconcile")
        return 0
    if args.command == "manage":
        return cmd_manage(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
