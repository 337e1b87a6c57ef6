"""``python -m darkmatter.ladder {queue,collect}``: the hub ladder's rows in parallel, as DVC experiments.

``queue ROW...`` queues one experiment per row: ``dvc exp run --queue --name ROW`` with that row's
per-run stages (every ``foreach: ${runs}`` stage of dvc.yaml, ``@ROW``) as targets, so each
experiment builds its row's chain and nothing else. ``dvc queue start -j N`` then runs N of them at
a time, each in its own copy of the repository under ``.dvc/tmp/exps`` and on the shared DVC cache.

``collect`` brings the finished rows back into the workspace together. ``dvc exp apply`` cannot: it
takes one experiment's whole ``dvc.lock``, so applying a second row drops the first row's entries.
Nor can a final ``dvc repro`` find them in the run cache: DVC 3 saves no stage with a ``cache: false``
output that is not a metric or a plot, and the figure folders of residual, ica, compare, causal,
probes and autointerp are such outputs (autointerp's response cache is also ``persist``). So
``collect`` takes, from each finished experiment of the current commit, the ``dvc.lock`` entries of
the runs it built, writes those entries' git-tracked outputs (metrics, figures) from the
experiment's commit, and checks their cached outputs out of the shared cache. ``dvc status`` then
shows those stages up to date, and ``dvc repro`` runs only what reads every row: the paper.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

from darkmatter.errors import UserError, cli

PER_RUN = "${runs}"


def per_run_stages(root: Path) -> list[str]:
    """The stages of dvc.yaml that are a foreach over ``runs``, in file order."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return [name for name, stage in stages.items() if isinstance(stage, dict) and stage.get("foreach") == PER_RUN]


def queue_commands(root: Path, rows: list[str], stages: list[str] | None = None) -> list[list[str]]:
    """One ``dvc exp run --queue`` per row, targeting that row's per-run stages (all, or ``stages``)."""
    from darkmatter.config import load_params

    params = load_params(root / "params.yaml")
    for row in rows:
        if row not in params.runs:
            raise UserError(f"{row!r} is not in runs {list(params.runs)}: list every row in params.yaml's runs "
                            "(and commit), then queue")
    if len(set(rows)) != len(rows):
        raise UserError(f"rows {rows} has duplicates")
    known = per_run_stages(root)
    for stage in stages or []:
        if stage not in known:
            raise UserError(f"--stages: {stage!r} is not a per-run stage of dvc.yaml; allowed: {', '.join(known)}")
    return [["dvc", "exp", "run", "--queue", "--name", row, *(f"{s}@{row}" for s in stages or known)] for row in rows]


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def finished_experiments(root: Path) -> dict[str, str]:
    """Name -> commit of every finished experiment whose baseline is HEAD (``dvc exp show``'s rows)."""
    head = _git(root, "rev-parse", "HEAD").strip()
    prefix = f"refs/exps/{head[:2]}/{head[2:]}/"
    listing = _git(root, "for-each-ref", "--format=%(refname) %(objectname)", prefix)
    return {ref[len(prefix):]: sha for ref, sha in (line.split() for line in listing.splitlines())}


def _lock_stages(text: str | None) -> dict:
    return ((yaml.safe_load(text) if text else None) or {}).get("stages") or {}


def built_runs(root: Path, names: list[str] | None = None) -> dict[str, tuple[str, dict]]:
    """Run -> (experiment, its per-run ``dvc.lock`` entries) for every run an experiment built: a run whose
    entries differ from the workspace's ``dvc.lock``. Two experiments that built one run differently fail."""
    from darkmatter.config import load_params

    exps = finished_experiments(root)
    if not exps:
        raise UserError("no finished experiment on this commit (HEAD): see dvc queue status, dvc queue logs NAME")
    for name in names or []:
        if name not in exps:
            raise UserError(f"{name!r} is not a finished experiment of this commit; finished: {', '.join(sorted(exps))}")
    runs = load_params(root / "params.yaml").runs
    per_run = set(per_run_stages(root))
    lock = root / "dvc.lock"
    current = _lock_stages(lock.read_text() if lock.exists() else None)
    built: dict[str, tuple[str, dict]] = {}
    for name in names or sorted(exps):
        entries: dict[str, dict] = {}
        for stage, entry in _lock_stages(_git(root, "show", f"{exps[name]}:dvc.lock")).items():
            base, _, run = stage.partition("@")
            if base in per_run and current.get(stage) != entry:
                entries.setdefault(run, {})[stage] = entry
        for run, stages in entries.items():
            if run not in runs:
                raise UserError(f"experiment {name!r} built run {run!r}, which runs {list(runs)} does not list; "
                                "add it to params.yaml's runs, then collect")
            if run in built and built[run][1] != stages:
                raise UserError(f"experiments {built[run][0]!r} and {name!r} both built run {run!r}; "
                                f"collect one: python -m darkmatter.ladder collect {name}")
            built.setdefault(run, (name, stages))
    return built


def collect(root: Path, names: list[str] | None = None) -> dict[str, str]:
    """Bring every run the experiments built into the workspace; returns run -> experiment."""
    from dvc.exceptions import CheckoutError
    from dvc.repo import Repo
    from dvc.utils.serialize import modify_yaml

    root = Path(root).resolve()
    built = built_runs(root, names)
    if not built:
        return {}
    exps = finished_experiments(root)
    for run, (name, stages) in built.items():
        paths = [out["path"] for entry in stages.values() for out in entry.get("outs", [])]
        tracked = _git(root, "ls-tree", "-r", "--name-only", exps[name], "--", *paths).split()
        for path in paths:  # the experiment's version replaces the workspace's, stale files included
            target = root / path
            if any(t == path or t.startswith(path.rstrip("/") + "/") for t in tracked):
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        if tracked:
            archive = subprocess.run(["git", "archive", "--format=tar", exps[name], "--", *tracked],
                                     cwd=root, capture_output=True, check=True).stdout
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(root, filter="data")
    with modify_yaml(root / "dvc.lock") as data:
        if not data:
            data.update({"schema": "2.0"})
        data["stages"] = data.get("stages") or {}
        for _, stages in built.values():
            data["stages"].update(stages)
    targets = [stage for _, stages in built.values() for stage in stages]
    try:
        with Repo(str(root)) as repo:
            repo.checkout(targets=targets, force=True)
            for target in targets:  # the .gitignore entries `dvc repro` would have written
                for stage in repo.stage.collect(target):
                    for out in stage.outs:
                        out.ignore()
    except CheckoutError as exc:
        raise UserError(f"dvc checkout of the collected stages failed ({exc}); is the DVC cache the one the "
                        "experiments ran on?") from None
    return {run: name for run, (name, _) in built.items()}


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m darkmatter.ladder", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="the repository root (default: here)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("queue", help="queue one DVC experiment per row (then: dvc queue start -j N)")
    p.add_argument("rows", nargs="+", help="runs listed in params.yaml's runs")
    p.add_argument("--stages", nargs="+", help="only these per-run stages and what they depend on (default: all)")
    p.add_argument("--dry", action="store_true", help="print the dvc commands instead of running them")
    p = sub.add_parser("collect", help="bring the rows of finished experiments into the workspace")
    p.add_argument("experiments", nargs="*", help="experiment names (default: every finished one of this commit)")
    args = parser.parse_args(argv)

    root = args.repo.resolve()
    if args.command == "queue":
        for command in queue_commands(root, args.rows, args.stages):
            print(" ".join(command), flush=True)
            # the DVC of this interpreter, whether or not its bin/ is on PATH
            if not args.dry and subprocess.run([sys.executable, "-m", *command], cwd=root).returncode != 0:
                raise UserError(f"{' '.join(command[:6])} failed (above)")
        if not args.dry:
            print("queued; run them N at a time with: dvc queue start -j N")
    else:
        collected = collect(root, args.experiments)
        for run, name in collected.items():
            print(f"collected run {run} from experiment {name}")
        if not collected:
            print("nothing to collect: dvc.lock already holds what the finished experiments built")
            return
        print("next: dvc repro (validate and the paper), then git add and commit dvc.lock, metrics/ and figures/")


if __name__ == "__main__":
    main()
