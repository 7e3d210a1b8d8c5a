"""`geoxray submit|status|logs|stop`: geoxray runs as Ray jobs, through the Ray Jobs API.

    geoxray submit [--address http://127.0.0.1:8265] [--wait|--follow] -- eval model=random
    geoxray submit -- sweep sweep=paper sweep.output_dir=/shared/runs/paper
    geoxray status [JOB]      (no JOB: list the cluster's jobs)
    geoxray logs JOB [--follow]
    geoxray stop JOB

The project folder travels as the job's `working_dir` (without .git, virtual envs, runs/ and
caches); the cluster's image supplies the Python packages. Secrets never travel: an override
or an environment variable that looks like a credential is refused, and API keys must come
from the cluster's own environment (a Kubernetes secret; see cluster/README.md). Outputs go
where the job writes them, so give `output_dir=` (eval) or `sweep.output_dir=` (sweep) on
storage the cluster shares; the job's working_dir copy is temporary.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import sys
import time
import uuid
from pathlib import Path

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
COMMANDS = {  # geoxray command -> the module the job's driver runs
    "eval": ["-m", "geoxray.cli", "eval"],
    "sweep": ["-m", "geoxray.sweep.run"],
    "profile": ["-m", "geoxray.capacity.profile"],
}
EXCLUDES = [".git", ".venv", "venv", "runs/", "profiles/*.tmp", "**/__pycache__", "*.egg-info",
            ".pytest_cache", ".mypy_cache", ".ruff_cache", ".cache/", "cache/", ".ci/",
            "benchmarks/results/", "*.log"]
# Forwarded when set locally: switches that keep a run offline and quiet (never a secret).
ENV_DEFAULTS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK",
                "RAY_USAGE_STATS_ENABLED", "TOKENIZERS_PARALLELISM")
# May be forwarded with --env NAME (local value) or --env NAME=VALUE (value for the cluster).
ENV_ALLOWED = ENV_DEFAULTS + ("GEOXRAY_CACHE", "GEOXBENCH_IMAGES", "HF_HOME", "HF_HUB_CACHE",
                              "VLLM_CACHE_ROOT", "VLLM_CPU_KVCACHE_SPACE", "VLLM_LOGGING_LEVEL",
                              "RAY_DATA_DISABLE_PROGRESS_BARS", "OMP_NUM_THREADS",
                              "NCCL_DEBUG", "CUDA_DEVICE_ORDER", "PYTHONUNBUFFERED")
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION)", re.I)
_SECRET_VALUE = re.compile(r"(sk-[A-Za-z0-9_\-]{16,}|hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|"
                           r"gh[pousr]_[A-Za-z0-9]{20,}|xox[abp]-[A-Za-z0-9\-]{10,}|"
                           r"eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,})")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(ValueError):
    pass


# --- what a job is made of ---------------------------------------------------------------------
def project_root() -> Path:
    """The folder holding geoxray/ and conf/: what the job's working_dir is."""
    return Path(__file__).resolve().parents[2]


def resolve_address(address: str | None) -> str:
    """--address, else $RAY_API_SERVER_ADDRESS, else an http $RAY_ADDRESS, else loopback."""
    if address:
        return address
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(name, "")
        if value.startswith(("http://", "https://")):
            return value
    return DEFAULT_ADDRESS


def check_overrides(overrides: list[str]) -> None:
    """Refuse anything that looks like a credential on the command line: the entrypoint is
    stored by the cluster and shown in its dashboard."""
    for text in overrides:
        key, _, value = text.partition("=")
        bare = key.lstrip("+~").rsplit(".", 1)[-1]
        if _SECRET_NAME.search(bare) and not bare.endswith("_env"):
            raise SubmitError(f"override {key!r} looks like a credential; secrets must come "
                              f"from the cluster's environment (model.api_key_env names the "
                              f"variable), never from the command line")
        if _SECRET_VALUE.search(value):
            raise SubmitError(f"the value of {key!r} looks like a credential; refusing to put "
                              f"it in a job's entrypoint")


def job_env(requested: list[str], local: dict[str, str] | None = None) -> dict[str, str]:
    """env_vars for the job: the quiet switches set locally, plus each --env NAME (its local
    value) or NAME=VALUE. Only allow-listed, non-secret names."""
    local = dict(os.environ if local is None else local)
    env = {k: local[k] for k in ENV_DEFAULTS if k in local}
    for item in requested:
        name, has_value, value = item.partition("=")
        if _SECRET_NAME.search(name) or (has_value and _SECRET_VALUE.search(value)):
            raise SubmitError(f"--env {name}: looks like a credential; give it to the cluster "
                              f"as a secret (cluster/README.md), never through a job")
        if name not in ENV_ALLOWED:
            raise SubmitError(f"--env {name}: not an allowed variable ({', '.join(ENV_ALLOWED)})")
        if has_value:
            env[name] = value
        elif name in local:
            env[name] = local[name]
        else:
            raise SubmitError(f"--env {name}: not set here; use --env {name}=VALUE")
    return env


def entrypoint(command: str, overrides: list[str], python: str = "python") -> str:
    if command not in COMMANDS:
        raise SubmitError(f"cannot submit {command!r}; one of {sorted(COMMANDS)}")
    check_overrides(overrides)
    return shlex.join([python, *COMMANDS[command], *overrides])


def runtime_env(env: dict[str, str], working_dir: Path | None = None) -> dict:
    return {"working_dir": str(working_dir or project_root()), "excludes": list(EXCLUDES),
            "env_vars": dict(env)}


def _warn_output(command: str, overrides: list[str]) -> None:
    key = {"eval": "output_dir=", "sweep": "sweep.output_dir="}.get(command)
    if key and not any(o.startswith(key) and len(o) > len(key) and o[len(key)] == "/"
                       for o in overrides):
        print(f"note: no absolute {key}...; results stay in the job's temporary working dir "
              f"on the node that ran the driver. Give {key}/shared/path for results you keep.",
              file=sys.stderr)


# --- the Jobs API ------------------------------------------------------------------------------
def client(address: str | None):
    from ray.job_submission import JobSubmissionClient
    return JobSubmissionClient(resolve_address(address))


def submit(command: str, overrides: list[str], *, address: str | None = None,
           env: list[str] | None = None, job_id: str | None = None, python: str = "python",
           working_dir: Path | None = None, num_cpus: float | None = None,
           num_gpus: float | None = None) -> str:
    """Submit one geoxray command as a Ray job; returns its submission id."""
    entry = entrypoint(command, overrides, python)
    renv = runtime_env(job_env(env or []), working_dir)
    job_id = job_id or f"geoxray-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    return client(address).submit_job(
        entrypoint=entry, runtime_env=renv, submission_id=job_id,
        metadata={"geoxray_command": command},
        entrypoint_num_cpus=num_cpus, entrypoint_num_gpus=num_gpus)


def wait_for(job_id: str, address: str | None = None, timeout_s: float | None = None,
             poll_s: float = 2.0) -> str:
    """Poll until the job ends (or the timeout passes); returns its last status."""
    c = client(address)
    deadline = None if timeout_s is None else time.time() + timeout_s
    while True:
        status = str(c.get_job_status(job_id).value)
        if status in TERMINAL or (deadline is not None and time.time() > deadline):
            return status
        time.sleep(poll_s)


def follow_logs(job_id: str, address: str | None = None, out=None) -> None:
    out = out or sys.stdout

    async def tail() -> None:
        async for chunk in client(address).tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())


# --- command lines -----------------------------------------------------------------------------
def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """Options before `--` (or before the first geoxray command), the command after."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    for i, arg in enumerate(argv):
        if arg in COMMANDS:
            return argv[:i], argv[i:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    """geoxray submit [options] -- eval|sweep|profile [overrides...]"""
    argv = list(sys.argv[1:] if argv is None else argv)
    own, command = _split_command(argv)
    parser = argparse.ArgumentParser(
        prog="geoxray submit", usage="geoxray submit [options] -- eval|sweep|profile "
        "[overrides...]", description="Run a geoxray command on a Ray cluster (Ray Jobs API).")
    parser.add_argument("--address", help=f"the cluster's dashboard (default $RAY_API_SERVER_"
                        f"ADDRESS, an http $RAY_ADDRESS, or {DEFAULT_ADDRESS})")
    parser.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                        help="forward an allow-listed variable (never a secret)")
    parser.add_argument("--job-id", help="submission id (default geoxray-<cmd>-<time>-<rand>)")
    parser.add_argument("--python", default="python", help="the cluster's Python (default "
                        "`python` on the cluster's PATH)")
    parser.add_argument("--num-cpus", type=float, help="CPUs reserved for the job's driver")
    parser.add_argument("--num-gpus", type=float, help="GPUs reserved for the job's driver")
    parser.add_argument("--wait", action="store_true", help="wait for the job to end")
    parser.add_argument("--follow", action="store_true", help="stream the job's logs until it "
                        "ends")
    parser.add_argument("--timeout", type=float, help="with --wait: give up after S seconds")
    parser.add_argument("--dry-run", action="store_true", help="print the job, submit nothing")
    args = parser.parse_args(own)
    if not command:
        parser.error("nothing to submit: add `-- eval|sweep|profile [overrides]`")
    cmd, overrides = command[0], command[1:]
    try:
        if args.dry_run:
            import json
            print(json.dumps({"address": resolve_address(args.address),
                              "entrypoint": entrypoint(cmd, overrides, args.python),
                              "runtime_env": runtime_env(job_env(args.env))}, indent=2))
            return 0
        entrypoint(cmd, overrides, args.python)  # refuses secrets before anything else
        _warn_output(cmd, overrides)
        job_id = submit(cmd, overrides, address=args.address, env=args.env,
                        job_id=args.job_id, python=args.python, num_cpus=args.num_cpus,
                        num_gpus=args.num_gpus)
    except SubmitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, RuntimeError) as exc:
        print(f"error: cannot submit to {resolve_address(args.address)}: {exc}",
              file=sys.stderr)
        return 2
    print(job_id)
    if not (args.wait or args.follow):
        print(f"follow it: geoxray logs {job_id} --follow; status: geoxray status {job_id}",
              file=sys.stderr)
        return 0
    if args.follow:
        follow_logs(job_id, args.address)
    status = wait_for(job_id, args.address, args.timeout)
    print(f"job {job_id}: {status}")
    if status not in TERMINAL:
        print(f"still {status} after {args.timeout} s; follow it: geoxray logs {job_id} "
              f"--follow", file=sys.stderr)
    elif status != "SUCCEEDED" and not args.follow:
        _explain(job_id, args.address)
    return 0 if status == "SUCCEEDED" else 1


def _explain(job_id: str, address: str | None, lines: int = 60) -> None:
    """Why a waited-for job did not succeed: Ray's message and the end of its log, on stderr
    (so a CI log shows the cause without another call)."""
    try:
        c = client(address)
        info = c.get_job_info(job_id)
        if info.message:
            print(f"message: {info.message}", file=sys.stderr)
        tail = c.get_job_logs(job_id).splitlines()[-lines:]
    except Exception as exc:  # only diagnostics: never turn a job's failure into a crash
        print(f"(cannot read the job's logs: {exc})", file=sys.stderr)
        return
    print(f"--- last {len(tail)} lines of the job's log ---", file=sys.stderr)
    print("\n".join(tail), file=sys.stderr)


def _job_parser(prog: str, needs_job: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("job", nargs=None if needs_job else "?", help="the job's submission id")
    parser.add_argument("--address", help=f"the cluster's dashboard (default {DEFAULT_ADDRESS})")
    return parser


def _run(fn, args) -> int:
    try:
        return fn(args)
    except (ConnectionError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def status_main(argv: list[str] | None = None) -> int:
    """geoxray status [JOB]: one job's status and details, or every job's one-liner."""
    args = _job_parser("geoxray status", needs_job=False).parse_args(argv)

    def show(a) -> int:
        c = client(a.address)
        if not a.job:
            for info in sorted(c.list_jobs(), key=lambda j: j.start_time or 0):
                print(f"{info.submission_id or info.job_id}\t{info.status.value}\t"
                      f"{info.entrypoint}")
            return 0
        info = c.get_job_info(a.job)
        took = ((info.end_time or time.time() * 1000) - info.start_time) / 1000 \
            if info.start_time else None
        print(f"job:        {info.submission_id or info.job_id}")
        print(f"status:     {info.status.value}")
        print(f"entrypoint: {info.entrypoint}")
        if info.message:
            print(f"message:    {info.message}")
        if took is not None:
            print(f"running for {took:.0f} s" if info.end_time is None else f"took {took:.0f} s")
        return 0

    return _run(show, args)


def logs_main(argv: list[str] | None = None) -> int:
    """geoxray logs JOB [--follow]"""
    parser = _job_parser("geoxray logs")
    parser.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    args = parser.parse_args(argv)

    def show(a) -> int:
        if a.follow:
            follow_logs(a.job, a.address)
        else:
            sys.stdout.write(client(a.address).get_job_logs(a.job))
        return 0

    return _run(show, args)


def stop_main(argv: list[str] | None = None) -> int:
    """geoxray stop JOB"""
    args = _job_parser("geoxray stop").parse_args(argv)

    def stop(a) -> int:
        stopped = client(a.address).stop_job(a.job)
        print(f"job {a.job}: " + ("stop requested" if stopped else "already ended"))
        return 0

    return _run(stop, args)


if __name__ == "__main__":
    sys.exit(main())
