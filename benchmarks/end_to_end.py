"""Wall time of the real command line, `python -m src.run -m experiment=fz_mnist seed=0..63 ...`, at pack=1
and at the default pack, and the time from launching a 2,000-seed sweep until its first model trains.

    .venv/bin/python benchmarks/end_to_end.py            # ~6.5 min on 2 idle cores
    .venv/bin/python benchmarks/end_to_end.py --seeds 16 # shorter
    .venv/bin/python benchmarks/end_to_end.py --first-step-repeats 5   # only launch -> first step, with its floor
    git worktree add /tmp/before <commit> && \
    .venv/bin/python benchmarks/end_to_end.py --first-step-repeats 5 --baseline /tmp/before   # before / after

Each command runs in a subprocess through a small launcher that runs `src.run` as `python -m src.run`
does (runpy, same argv) and appends timestamps to a file when src.training.job's `run_job` starts and ends,
Lightning's `on_train_start` / `on_train_end` / first `on_train_batch_start` of a job fire, and
`SubsetClassifier.evaluate` starts and ends (a few file appends per job; nothing else changes). Times are
measured from just before the subprocess is started, so they include Python start-up, imports, the
pre-flight, Hydra composition, data loading and record writing. The 2,000-seed sweeps are killed (their
process groups, which this script started) as soon as their first training step begins.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from machine import busy_cores_s, table, wait_for_quiet

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"


def cpu_s_here() -> float:
    """CPU seconds of this process and of its finished children (the commands)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


LAUNCHER = '''"""python launcher.py ARGS == python -m src.run ARGS, plus timestamps in $MEMINF_BENCH_EVENTS."""
import importlib.abc
import importlib.util
import os
import runpy
import sys
import time

EVENTS = os.environ["MEMINF_BENCH_EVENTS"]


IMPORTS = ("torch", "timm", "pytorch_lightning")  # a timestamp when each has been imported
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher"  # its launch: the sweeper hands over the first jobs


def emit(name):
    with open(EVENTS, "a") as handle:
        handle.write(f"{name} {time.time():.6f}\\n")


def stamp(name, func):
    def wrapper(*args, **kwargs):
        emit(name + "_start")
        try:
            return func(*args, **kwargs)
        finally:
            emit(name + "_end")
    return wrapper


def after(name, func):
    """func, then a timestamp: the class keeps its own hook (nothing is replaced)."""
    def wrapper(*args, **kwargs):
        result = func(*args, **kwargs)
        emit(name)
        return result
    return wrapper


def instrument(module):
    if module.__name__ in IMPORTS:
        emit("imported_" + module.__name__)
        return
    if module.__name__ == BASIC_LAUNCHER:
        module.BasicLauncher.launch = stamp("launch", module.BasicLauncher.launch)
        return
    if module.__name__ == "src.training.job":
        module.run_job = stamp("job", module.run_job)
        module.build_members = stamp("build_members", module.build_members)
        return
    cls = module.SubsetClassifier
    cls.evaluate = stamp("eval", cls.evaluate)
    cls.on_train_start = after("train_start", cls.on_train_start)
    cls.on_train_end = after("train_end", cls.on_train_end)
    first_batch = cls.on_train_batch_start

    def on_train_batch_start(self, batch, batch_idx):
        if batch_idx == 0 and self.current_epoch == 0:
            emit("first_step")
        return first_batch(self, batch, batch_idx)
    cls.on_train_batch_start = on_train_batch_start


class Hook(importlib.abc.MetaPathFinder):
    """Instruments src.training.job and .module right after each is imported (inside the first job, as without
    the hook), and stamps the end of the IMPORTS. A name stays pending until it executes: libraries probe
    `importlib.util.find_spec` for optional packages without importing them."""
    pending = {"src.training.job", "src.training.module", BASIC_LAUNCHER, *IMPORTS}
    looking_up = set()

    def find_spec(self, name, path, target=None):
        if name not in self.pending or name in self.looking_up:
            return None
        self.looking_up.add(name)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.looking_up.discard(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            self.pending.discard(name)
            execute(module)
            instrument(module)
        spec.loader.exec_module = exec_module
        return spec


emit("python_started")
sys.path.insert(0, os.getcwd())
sys.meta_path.insert(0, Hook())
runpy.run_module("src.run", run_name="__main__", alter_sys=True)
'''


@dataclass
class Run:
    label: str
    seeds: int
    launched: float
    ended: float | None
    events: list[tuple[str, float]]  # from the launcher's hook
    lines: list[tuple[float, str]]  # the command's output lines, stamped when they arrived here
    returncode: int | None
    others: float  # cores other processes used while the command ran (mean)

    def first(self, name: str) -> float | None:
        return next((t - self.launched for event, t in self.events if event == name), None)

    def first_line(self, text: str) -> float | None:
        return next((t - self.launched for t, line in self.lines if text in line), None)


def read_lines(stream: IO[str], lines: list[tuple[float, str]], log: IO[str]) -> None:
    for line in stream:
        lines.append((time.time(), line.rstrip("\n")))
        log.write(line)


def launch(label: str, args: Sequence[str], seeds: int, workdir: Path, stop_at: str | None = None,
           timeout_s: float = 900, threads: int | None = None, tree: Path = ROOT) -> Run:
    """Run the launcher with `args` in the checkout `tree` (its src/ and its Hydra plugins); with `stop_at`, kill
    its process group once that event is written."""
    events, log_path = workdir / f"{label}.events", workdir / f"{label}.log"
    env = {**os.environ, "MEMINF_BENCH_EVENTS": str(events), "PYTHONUNBUFFERED": "1"}
    if tree != ROOT:  # its hydra_plugins before the installed ones (a namespace package: the first path wins)
        env["PYTHONPATH"] = str(tree / "src")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads
    lines: list[tuple[float, str]] = []
    cores = os.cpu_count() or 1
    wait_for_quiet(threshold=0.3 + cores - min(cores, threads or cores))  # others may use the cores we leave
    busy, here = busy_cores_s(), cpu_s_here()
    with log_path.open("w") as log:
        launched = time.time()
        proc = subprocess.Popen([str(PYTHON), str(workdir / "launcher.py"), *args], cwd=tree, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        reader = threading.Thread(target=read_lines, args=(proc.stdout, lines, log), daemon=True)
        reader.start()
        ended = wait(proc, events, stop_at, timeout_s)
        reader.join(10)
    others = max(0.0, busy_cores_s() - busy - (cpu_s_here() - here)) / (time.time() - launched)
    parsed = [(name, float(t)) for name, t in (line.split() for line in events.read_text().splitlines())]
    if stop_at is None and proc.returncode != 0:
        sys.exit(f"{label} failed (exit {proc.returncode}); see the log:\n" + log_path.read_text())
    return Run(label, seeds, launched, ended, parsed, lines, proc.returncode, others)


def wait(proc: subprocess.Popen, events: Path, stop_at: str | None, timeout_s: float) -> float | None:
    """The time the command ended by itself, or None when it was stopped at `stop_at` (or timed out)."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        if stop_at and events.exists() and f"{stop_at} " in events.read_text():
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        return time.time()
    os.killpg(proc.pid, signal.SIGTERM)  # the session this script started for the command
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return None


@dataclass
class JobTimes:
    setup: float  # run_job start → on_train_start: data, masks, model building, Trainer, fit set-up
    training: float  # on_train_start → on_train_end: Lightning's epoch loop
    teardown: float  # on_train_end → first evaluate: end of Trainer.fit
    evaluation: float  # the evaluate calls (every train and test example)
    records: float  # last evaluate → run_job end: record building and writing, logging
    between: float  # run_job end → next run_job start (Hydra's per-job work); 0 for the last job

    @property
    def total(self) -> float:
        return self.setup + self.training + self.teardown + self.evaluation + self.records + self.between

    @property
    def fixed(self) -> float:
        return self.setup + self.teardown + self.records + self.between


def job_times(run: Run) -> list[JobTimes]:
    jobs: list[dict[str, float]] = []
    for name, t in run.events:
        if name == "job_start":
            jobs.append({})
        if jobs:
            jobs[-1].setdefault(name, t)
            jobs[-1][name + "_last"] = t
    result = []
    for k, job in enumerate(jobs):
        between = jobs[k + 1]["job_start"] - job["job_end"] if k + 1 < len(jobs) else 0.0
        result.append(JobTimes(job["train_start"] - job["job_start"], job["train_end"] - job["train_start"],
                               job["eval_start"] - job["train_end"], job["eval_end_last"] - job["eval_start"],
                               job["job_end"] - job["eval_end_last"], between))
    return result


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_rows(runs: list[Run], baseline: Run) -> list[list[str]]:
    rows = []
    base_per_model = (baseline.ended - baseline.launched) / baseline.seeds
    for run in runs:
        wall = None if run.ended is None else run.ended - run.launched
        per_model = None if wall is None else wall / run.seeds
        speedup = None if per_model is None else base_per_model / per_model
        jobs = sum(1 for name, _ in run.events if name == "job_start")
        rows.append([run.label, run.seeds, jobs if wall is not None else "-", fmt(wall, 1), fmt(per_model, 3),
                     "-" if speedup is None else f"{speedup:.2f}x", fmt(run.first("job_start")),
                     fmt(run.first("first_step")), f"{run.others:.2f}"])
    return rows


def breakdown_rows(run: Run) -> list[list[str]]:
    jobs = job_times(run)
    wall = run.ended - run.launched
    startup = run.first("job_start")
    parts = [("set-up: run_job start → on_train_start (data, build, Trainer, fit set-up)", "setup"),
             ("training: Lightning epoch loop", "training"),
             ("Trainer.fit teardown", "teardown"),
             ("evaluation (every train + test example)", "evaluation"),
             ("records: building, writing, logging", "records"),
             ("between jobs (Hydra)", "between")]
    mean_total = sum(job.total for job in jobs) / len(jobs)
    rows = [[label, fmt(sum(getattr(job, key) for job in jobs) / len(jobs), 3),
             f"{100 * sum(getattr(job, key) for job in jobs) / len(jobs) / mean_total:.1f}%"] for label, key in parts]
    fixed = sum(job.fixed for job in jobs) / len(jobs)
    rows.append(["fixed per job (set-up + teardown + records + between)", fmt(fixed, 3),
                 f"{100 * fixed / mean_total:.1f}%"])
    rows.append(["mean job", fmt(mean_total, 3), "100%"])
    rows.append([f"process start-up before job 1 (imports, pre-flight, Hydra), once per {len(jobs)} jobs",
                 fmt(startup, 3), f"{100 * startup / wall:.1f}% of wall"])
    rows.append(["first job, whole (it also pays the first Trainer, git metadata)", fmt(jobs[0].total, 3), ""])
    return rows


def import_floor_s(threads: int | None) -> float:
    """Wall seconds of a bare `python -c "import torch, pytorch_lightning"`: what no launch can go below."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    cores = os.cpu_count() or 1
    wait_for_quiet(threshold=0.3 + cores - min(cores, threads or cores))
    started = time.time()
    subprocess.run([str(PYTHON), "-c", "import torch, pytorch_lightning"], cwd=ROOT, env=env, check=True)
    return time.time() - started


def first_step_latency(common: list[str], n: int, repeats: int, work: Path, threads: int | None,
                       baseline: Path | None) -> None:
    """Launch -> first training step of an n-seed sweep against the import floor, `repeats` times each,
    alternating (with `baseline`, a checkout of an earlier commit, launched in turn too); medians and their
    difference (issue 13's target: within 1.5 s)."""
    trees = {"this checkout": ROOT, **({f"baseline {baseline}": baseline} if baseline else {})}
    floors: list[float] = []
    runs: dict[str, list[Run]] = {name: [] for name in trees}
    for repeat in range(repeats):
        floors.append(import_floor_s(threads))
        for name, tree in trees.items():
            command = [*common, f"seed=0..{n - 1}", f"paths.output_dir={work / f'first_{repeat}_{len(runs[name])}'}"]
            runs[name].append(launch(f"first_{repeat}_{tree.name}", command, n, work, stop_at="first_step",
                                     threads=threads, tree=tree))
    floor = statistics.median(floors)
    rows = [["bare import of torch and pytorch_lightning (the floor)", fmt(floor), "", " ".join(map(fmt, floors))]]
    for name, tree_runs in runs.items():
        firsts = [run.first("first_step") for run in tree_runs]
        first = median_of(firsts)
        rows.append([f"{name}: python -m src.run -m ... to its first training step", fmt(first),
                     fmt(None if first is None else first - floor), " ".join(map(fmt, firsts))])
    print(f"\nLaunch to the first training step of a {n}-seed sweep, {repeats} launches each (s)\n")
    print(table(["", "median", "minus the floor", "all"], rows))
    print("\nWhere the time to the first step goes (median over the launches, s after launch; the imports end in "
          "the order they happen)\n")
    print(table(["milestone", *runs], [[label, *(fmt(median_of([get(run) for run in tree_runs]))
                                                 for tree_runs in runs.values())]
                                      for label, get in STARTUP_MILESTONES]))


STARTUP_MILESTONES = (
    ("torch imported", lambda run: run.first("imported_torch")),
    ("timm imported (the plan builds the model once)", lambda run: run.first("imported_timm")),
    ("plan printed (the 'sweep ...: N seeds' line)", lambda run: run.first_line("to train in")),
    ("the sweeper hands the launcher its first jobs (BasicLauncher.launch)", lambda run: run.first("launch_start")),
    ("pytorch_lightning imported (the job module)", lambda run: run.first("imported_pytorch_lightning")),
    ("first run_job starts", lambda run: run.first("job_start")),
    ("its models are built (seeded, initialised, packed)", lambda run: run.first("build_members_end")),
    ("first training step", lambda run: run.first("first_step")),
)


def median_of(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def timeline_rows(runs: Sequence[Run]) -> list[list[str]]:
    """Milestones from launch to the first training step, one column per run."""
    milestones = [("Python started (launcher's first line)", lambda run: run.first("python_started")),
                  *STARTUP_MILESTONES]
    return [[label, *(fmt(get(run)) for run in runs)] for label, get in milestones]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=64, help="seeds of the timed sweeps (default 64)")
    parser.add_argument("--first-step-seeds", type=int, default=2000, help="seeds of the first-step sweeps")
    parser.add_argument("--first-step-repeats", type=int, default=0,
                        help="only measure launch -> first step of the first-step sweep against the import floor, "
                             "this many times each (medians)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for the commands (default: unset, one thread per core); 1 keeps "
                             "times stable while another process keeps a core busy")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="with --first-step-repeats: a checkout of an earlier commit (git worktree add DIR REV), "
                             "launched in turn with this one")
    args = parser.parse_args()
    common = ["-m", "experiment=fz_mnist", "logger=none"]
    seeds, big = f"seed=0..{args.seeds - 1}", f"seed=0..{args.first_step_seeds - 1}"
    print(f"load average at start: {os.getloadavg()}, OMP_NUM_THREADS={args.threads or 'unset'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="meminf_e2e_") as tmp:
        work = Path(tmp)
        (work / "launcher.py").write_text(LAUNCHER)
        if args.first_step_repeats:
            first_step_latency(common, args.first_step_seeds, args.first_step_repeats, work, args.threads,
                               args.baseline)
            return
        runs: list[Run] = []
        for label, extra in (("pack=1", ["pack=1"]), ("pack=auto (default)", [])):
            command = [*common, seeds, f"paths.output_dir={work / f'out_{len(runs)}'}", *extra]
            print(f"running {label}: python -m src.run {' '.join(command)}", flush=True)
            runs.append(launch(label, command, args.seeds, work, threads=args.threads))
        n = args.first_step_seeds
        # The last setting is not the project's default (conf/hydra/default.yaml: max_batch_size 16).
        for label, extra in ((f"{n} seeds, pack=auto", []), (f"{n} seeds, pack=1", ["pack=1"]),
                             (f"{n} seeds, pack=auto, hydra.sweeper.max_batch_size=1",
                              ["hydra.sweeper.max_batch_size=1"])):
            command = [*common, big, f"paths.output_dir={work / f'out_{len(runs)}'}", *extra]
            print(f"running {label} until its first training step: python -m src.run {' '.join(command)}",
                  flush=True)
            runs.append(launch(label, command, n, work, stop_at="first_step", threads=args.threads))
    print(f"load average at end: {os.getloadavg()}")
    print("\nEnd to end (times from launching the subprocess; s/model = wall / seeds)\n")
    print(table(["setting", "seeds", "jobs", "wall s", "s/model", "speed-up", "first job starts s",
                 "first training step s", "others' cores"], summary_rows(runs, runs[0])))
    print(f"\nFrom launch to the first training step of a {n}-seed sweep (s after launch)\n")
    print(table(["milestone", *(run.label for run in runs[2:])], timeline_rows(runs[2:])))
    for run in runs[:2]:
        print(f"\nWhere a job's time goes, {run.label}, {run.seeds} seeds (mean over jobs)\n")
        print(table(["part", "s", "% of job"], breakdown_rows(run)))


if __name__ == "__main__":
    main()
