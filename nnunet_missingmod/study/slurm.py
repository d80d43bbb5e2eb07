"""The study through SLURM: every step a job, chained by ``afterok`` dependencies.

SMML's priors, then each training, then each evaluation (a job array over
``nnUNetv2_evaluate_missing -num_parts/-part_id`` when ``--eval_parts`` is above 1, then the merge
of its parts), then the report. Each job runs this same command with ``--step``, in the same work
folder: it does its one step and adds its mark to ``study.json`` under a file lock, so jobs that
finish together lose nothing. The submission records every job in ``WORK/slurm/jobs.json``: a
second submission leaves finished steps and queued or running jobs alone, and resubmits a step
whose job ended without finishing it only with ``--resubmit_failed``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from typing import Optional

from nnunet_missingmod.study.study import NEEDS_PRIORS, PRIORS_STEP, Study, StudyError, log

REPORT_STEP = "report"
MERGE = "merge "  # "merge evaluate X seed 1": the merge of a sharded evaluation's parts
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}
# Options of the command that say how to run it, not what the study is (left out of the jobs' command).
RUN_OPTIONS = ("run", "dry_run", "resubmit_failed", "partition", "gpus", "time", "mem", "cpus_per_task", "sbatch",
               "setup", "eval_parts", "step", "part", "num_parts", "report_only", "restamp_archive")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("how to run it: here, or as SLURM jobs")
    group.add_argument("--run", choices=("local", "slurm"), default="local",
                       help="local: every step in this process, one after another (default); slurm: submit every "
                            "step as a job with afterok dependencies and return")
    group.add_argument("--dry_run", action="store_true", help="slurm: print the job scripts, submit nothing")
    group.add_argument("--resubmit_failed", action="store_true",
                       help="slurm: also resubmit steps whose job ended without finishing them")
    group.add_argument("--partition", help="slurm: partition of every job")
    group.add_argument("--gpus", type=int, help="slurm: GPUs per job (default 1 with -device cuda, else 0)")
    group.add_argument("--time", help="slurm: time limit per job (sbatch --time, e.g. 2-00:00:00)")
    group.add_argument("--mem", help="slurm: memory per job (sbatch --mem, e.g. 64G)")
    group.add_argument("--cpus_per_task", type=int, help="slurm: CPU cores per job (nnU-Net's augmentation "
                       "workers need several)")
    group.add_argument("--sbatch", action="append", default=[], metavar="LINE",
                       help="slurm: an extra #SBATCH option for every job, e.g. --sbatch='--account=abc' (repeatable)")
    group.add_argument("--setup", help="slurm: a shell line every job runs first, e.g. 'module load cuda; "
                       "source ~/venv/bin/activate'")
    group.add_argument("--eval_parts", type=int, default=1,
                       help="slurm: share each evaluation's cases among this many array tasks, then merge (default 1)")
    group.add_argument("--step", help=argparse.SUPPRESS)  # a job's one step
    group.add_argument("--part", type=int, help=argparse.SUPPRESS)
    group.add_argument("--num_parts", type=int, help=argparse.SUPPRESS)


@dataclass
class Resources:
    partition: Optional[str] = None
    gpus: int = 0
    time: Optional[str] = None
    mem: Optional[str] = None
    cpus_per_task: Optional[int] = None
    extra: list = field(default_factory=list)
    setup: Optional[str] = None
    eval_parts: int = 1

    def sbatch_lines(self) -> list[str]:
        lines = [f"--partition={self.partition}"] if self.partition else []
        lines += [f"--gres=gpu:{self.gpus}"] if self.gpus else []
        lines += [f"--time={self.time}"] if self.time else []
        lines += [f"--mem={self.mem}"] if self.mem else []
        lines += [f"--cpus-per-task={self.cpus_per_task}"] if self.cpus_per_task else []
        return lines + [line.removeprefix("#SBATCH").strip() for line in self.extra]


def resources_of(args) -> Resources:
    if args.eval_parts < 1:
        raise StudyError(f"--eval_parts {args.eval_parts}: at least 1")
    gpus = args.gpus if args.gpus is not None else (1 if (args.device or "cuda") == "cuda" else 0)
    return Resources(args.partition, gpus, args.time, args.mem, args.cpus_per_task, list(args.sbatch), args.setup,
                     args.eval_parts)


def study_arguments(args, parser: argparse.ArgumentParser) -> list[str]:
    """The command line of the study itself (what it trains, on what), for the jobs to repeat."""
    arguments = []
    for action in parser._actions:  # argparse has no public way to list a parser's options
        if not action.option_strings or action.dest in RUN_OPTIONS or action.dest == "help":
            continue
        value = getattr(args, action.dest)
        if value is None or value is False or (action.dest == "fold" and value == 0) \
                or (action.dest == "plans" and value == "nnUNetPlans") or action.help == argparse.SUPPRESS:
            continue
        if action.dest in ("work", "test_images", "test_labels", "report", "archive") and value != "none":
            value = os.path.abspath(value)
        flag = action.option_strings[0]
        if value is True:
            arguments.append(flag)
        elif isinstance(value, list):
            arguments += [flag, *map(str, value)]
        else:
            arguments += [flag, str(value)]
    return arguments


# --- the jobs ------------------------------------------------------------------------------------

@dataclass
class Job:
    step: str  # what it runs (--step), also its key in jobs.json
    needs: list  # steps that must have finished first
    array: int = 0  # number of array tasks (the parts of an evaluation), 0 for a plain job


def plan_jobs(study: Study, eval_parts: int) -> list[Job]:
    """Every step of the study not done yet, in an order where each job comes after what it needs."""
    jobs, trainings = [], []
    if any(t in NEEDS_PRIORS for t in study.trainers) and not study.done(PRIORS_STEP):
        jobs.append(Job(PRIORS_STEP, []))
    for evaluation in study.evaluations():
        if evaluation["ensemble_with"] is None:
            step = f"train {evaluation['trainer']} seed {evaluation['seed']}"
            if step not in trainings:
                trainings.append(step)
                trainer, seed = evaluation["trainer"], evaluation["seed"]
                jobs.append(Job(step, study.training_needs(trainer, seed)))
    finished = []  # the step after which each evaluation is done: itself, or the merge of its parts
    for evaluation in study.evaluations():
        if eval_parts > 1:
            jobs.append(Job(evaluation["step"], evaluation["needs"], array=eval_parts))
            jobs.append(Job(MERGE + evaluation["step"], [evaluation["step"]]))
        else:
            jobs.append(Job(evaluation["step"], evaluation["needs"]))
        finished.append(jobs[-1].step)
    jobs.append(Job(REPORT_STEP, finished))
    return [job for job in jobs if not study.done(job.step.removeprefix(MERGE))]


def job_script(study: Study, job: Job, resources: Resources, arguments: list[str]) -> str:
    name = job.step.replace(" ", "_").replace("+", "-")
    logs = os.path.join(study.work, "slurm", "logs")
    output = os.path.join(logs, f"{name}_%A_%a.out" if job.array else f"{name}_%j.out")
    lines = ["#!/bin/bash", f"#SBATCH --job-name=mm:{name}"[:200], f"#SBATCH --output={output}",
             "#SBATCH --kill-on-invalid-dep=yes",  # a job whose dependency failed is cancelled, not left pending
             *(f"#SBATCH {line}" for line in resources.sbatch_lines())]
    if job.array:
        lines.append(f"#SBATCH --array=0-{job.array - 1}")
    lines += ["", "set -eo pipefail", *([resources.setup] if resources.setup else [])]
    lines += [f"export {name}={shlex.quote(study.env[name])}" for name in ("nnUNet_raw", "nnUNet_preprocessed")]
    command = ["nnUNetv2_missingmod_study", *arguments, "--step", job.step]
    text = shlex.join(command)
    if job.array:
        text += f' --part "$SLURM_ARRAY_TASK_ID" --num_parts {job.array}'
    return "\n".join(lines + [f"cd {shlex.quote(study.work)}", text, ""])


class JobRecord:
    """WORK/slurm/jobs.json: the job of each submitted step, and SLURM's word on which are still queued."""

    def __init__(self, work: str):
        self.path = os.path.join(work, "slurm", "jobs.json")
        self.jobs = {}
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.jobs = json.load(f)

    def save(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".partial"
        with open(tmp, "w") as f:
            json.dump(self.jobs, f, indent=1)
        os.replace(tmp, self.path)

    @staticmethod
    def active_jobs() -> set[str]:
        """Ids of this user's jobs SLURM still queues or runs (an array counts while any task does)."""
        result = subprocess.run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i %T"], capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise StudyError(f"squeue failed: {result.stderr.strip()}")
        return {line.split()[0].split("_")[0] for line in result.stdout.splitlines()
                if len(line.split()) == 2 and line.split()[1] in ACTIVE_STATES}


def written_after(report: str, job: dict) -> bool:
    """Whether ``report`` was written after ``job`` (a jobs.json record) was submitted."""
    submitted = time.mktime(time.strptime(job["submitted"], "%Y-%m-%d %H:%M:%S"))
    return os.path.isfile(report) and os.path.getmtime(report) >= submitted


def submit(study: Study, resources: Resources, arguments: list[str], report: str, dry_run: bool = False,
           resubmit_failed: bool = False) -> dict[str, str]:
    """Submit every step not done (``dry_run``: print the scripts); returns {step: job id}."""
    study.prepare_data()
    study.forget_steps_of_other_code()
    study.open_archive()
    study.reload()
    jobs = plan_jobs(study, resources.eval_parts)
    record = JobRecord(study.work)
    active = JobRecord.active_jobs() if record.jobs and not dry_run else set()
    submitted, failed, skipped = {}, [], []
    scripts = os.path.join(study.work, "slurm", "scripts")
    os.makedirs(os.path.join(study.work, "slurm", "logs"), exist_ok=True)
    os.makedirs(scripts, exist_ok=True)
    for job in jobs:
        earlier = record.jobs.get(job.step)
        if earlier and earlier["job_id"] in active:
            submitted[job.step] = earlier["job_id"]  # queued or running: left alone, its dependents wait on it
            continue
        if job.step == REPORT_STEP and earlier and written_after(report, earlier):
            if not submitted:
                continue  # nothing new: the report of these steps is written (a report is never marked done)
            earlier = None  # new steps will finish: a new report after them, which is not a resubmission
        if earlier and not resubmit_failed and not dry_run:
            failed.append(f"{job.step} (job {earlier['job_id']}, log in {os.path.join(study.work, 'slurm', 'logs')})")
            continue
        waits_on = [submitted.get(need) for need in job.needs if not study.done(need.removeprefix(MERGE))]
        if None in waits_on:  # a step it needs failed and is not resubmitted
            skipped.append(job.step)
            continue
        script = job_script(study, job, resources, arguments)
        path = os.path.join(scripts, job.step.replace(" ", "_").replace("+", "-") + ".sh")
        dependency = [f"--dependency=afterok:{':'.join(waits_on)}"] if waits_on else []
        if dry_run:
            print(f"# sbatch {' '.join(dependency or ['(no dependency)'])} {path}\n{script}")
            submitted[job.step] = f"<{job.step}>"
            continue
        with open(path, "w") as f:
            f.write(script)
        result = subprocess.run(["sbatch", "--parsable", *dependency, path], capture_output=True, text=True)
        if result.returncode != 0:
            raise StudyError(f"sbatch {path} failed: {result.stderr.strip()}")
        job_id = result.stdout.strip().split(";")[0]
        submitted[job.step] = job_id
        record.jobs[job.step] = {"job_id": job_id, "submitted": time.strftime("%Y-%m-%d %H:%M:%S"), "script": path}
        record.save()
    new = [s for s in submitted if not (record.jobs.get(s, {}).get("job_id") in active)]
    log(f"slurm: {len(jobs)} step(s) to do; {'would submit' if dry_run else 'submitted'} {len(new)}, "
        f"{len(submitted) - len(new)} still queued or running"
        + (f"; the report will be {report}" if not dry_run else ""))
    if failed:
        log(f"slurm: {len(failed)} step(s) whose job ended without finishing them, not resubmitted (pass "
            "--resubmit_failed): " + "; ".join(failed))
    if skipped:
        log(f"slurm: {len(skipped)} step(s) wait on those and were not submitted: " + "; ".join(skipped))
    return submitted


def run_step(study: Study, step: str, part: Optional[int], num_parts: Optional[int], report: str, command: str,
             preset) -> None:
    """One job's step (``--step``), in this process."""
    from nnunet_missingmod.study.report import write_report
    if step == PRIORS_STEP:
        study.ensure_priors()
    elif step.startswith("train "):
        trainer, seed = step.removeprefix("train ").rsplit(" seed ", 1)
        study.train(trainer, int(seed) if seed.isdigit() else seed)
    elif step.startswith(("evaluate ", MERGE)):
        evaluation = next((e for e in study.evaluations() if e["step"] == step.removeprefix(MERGE)), None)
        if evaluation is None:
            raise StudyError(f"--step {step}: not an evaluation of this study")
        if step.startswith(MERGE):
            study.merge_evaluation(evaluation["label"], evaluation["step"].rsplit(" seed ", 1)[1])
        else:
            study.evaluate(evaluation["trainer"], evaluation["seed"], evaluation["subsets"], evaluation["ensemble_with"],
                           evaluation["figures"], part=(part, num_parts) if num_parts else None)
    elif step == REPORT_STEP:
        study.open_archive()  # archives the steps the jobs finished
        write_report(study, os.path.abspath(report), command.split(" --step ")[0], preset)
    else:
        raise StudyError(f"--step {step}: no such step (train ..., evaluate ..., merge evaluate ..., "
                         f"{PRIORS_STEP}, {REPORT_STEP})")

