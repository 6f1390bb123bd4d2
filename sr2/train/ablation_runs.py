"""The runs of an ablation study: arms of configs/search_r2.py over seeds, from shared warm
starts.

Each (arm, seed) runs experiments/train.py's job in ROOT/ARM/seedN (`workdir_of`), all
arms of a seed starting from that seed's kept warm start (`ensure_warm_start` makes it
where it is missing), so the arms differ only after it. `run_arms` skips the pairs a
record already holds and resumes an interrupted run from its checkpoint, so a study
spread over several sessions or machines goes on where it stopped; `finished_runs`
collects what is there without training. The record and its tables are
sr2/train/ablation.py.
"""

from __future__ import annotations

import json
import pathlib
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sr2.train import ablation, records


def train_command(
  backbone: str, arm: str, seed: int, workdir: str | pathlib.Path, init_from: str = ""
) -> str:
  """The experiments/train.py command that makes one run of the study."""
  cmd = [
    "python experiments/train.py",
    f"--config configs/search_r2.py:{backbone},{arm}",
    f"--workdir {workdir}",
    f"--config.seed={seed}",
  ]
  return " ".join(cmd + ([f"--init_from {init_from}"] if init_from else []))


def workdir_of(root: str | pathlib.Path, arm: str, seed: int) -> pathlib.Path:
  """Where the driver runs `arm` with `seed`: ROOT/ARM/seedN."""
  return pathlib.Path(root) / arm / f"seed{seed}"


def reused_command(workdir: str | pathlib.Path) -> str:
  """ "(reused, made at COMMIT) python ARGV..." from a run's run.json (sr2/train/records.py):
  the command that first started it, flags and all; "(reused) WORKDIR" without one."""
  path = pathlib.Path(workdir) / records.RUN
  run = json.loads(path.read_text()) if path.exists() else {}
  if not run.get("argv"):
    return f"(reused) {workdir}"
  return f"(reused, made at {str(run.get('commit', '?'))[:7]}) python {shlex.join(run['argv'])}"


def locate(
  root, arm: str, seed: int, *, backbone: str, init_from: str, reuse: Mapping[str, str]
) -> tuple[pathlib.Path, str]:
  """Where the run of (arm, seed) lives and the command that makes it: a reused run's
  folder and the command it was started with (`reused_command`), else
  `workdir_of(root, arm, seed)` and its `train_command`."""
  if arm in reuse:
    workdir = pathlib.Path(reuse[arm].format(seed=seed))
    return workdir, reused_command(workdir)
  workdir = workdir_of(root, arm, seed)
  start = init_from.format(seed=seed) if init_from else ""
  return workdir, train_command(backbone, arm, seed, workdir, start)


def ensure_warm_start(config, workdir: str | pathlib.Path) -> None:
  """Makes a warm start other runs can borrow in `workdir`, unless one is there: the
  config's SFT and evaluation, no GRPO step (`rl.steps = 0`, `rl.keep_warm_start`)."""
  from sr2.train.loop import train_and_evaluate  # the training stack, only when runs are made

  if (pathlib.Path(workdir) / "warm_start").is_dir():
    return
  config.rl.steps = 0
  config.rl.keep_warm_start = True
  train_and_evaluate(config, str(workdir))


def check_warm_start(workdir: str | pathlib.Path, seed: int, em_before_rl: float) -> None:
  """Raises ValueError unless the warm start in `workdir` scored `em_before_rl` before RL
  (its summary.json), the score of the recorded runs of `seed` that it should be shared by."""
  got = ablation.read_summary(workdir).get("em_before_rl")
  if got is None:
    raise ValueError(
      f"{workdir}: its summary.json has no em_before_rl; expected the warm start's evaluation"
    )
  if abs(got - em_before_rl) > ablation.SAME_EM:
    raise ValueError(
      f"seed {seed}: the warm start in {workdir} scores test EM {100 * got:.1f}% before RL, "
      f"but the recorded runs of seed {seed} started from one scoring "
      f"{100 * em_before_rl:.1f}%. New runs would not pair with them. Restore their warm "
      "start, or move the seed's recorded runs out of the record and run them all again "
      "(a warm start remade on another machine can differ: XLA compiles CPU code for the host)."
    )


def run_arms(
  config_of: Callable[[str], Any],
  arms: Sequence[str],
  seeds: Sequence[int],
  root: str | pathlib.Path,
  *,
  backbone: str = "tiny_world",
  init_from: str = "",
  reuse: Mapping[str, str] | None = None,
  done: Iterable[tuple[str, int]] = (),
  warm_em: Mapping[int, float] | None = None,
  on_run: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
  """Trains every (seed, arm) not `done`, seed by seed; returns their `record`s.

  Args:
    config_of: arm -> its ConfigDict (the seed is set here).
    arms, seeds: what to run; all arms of a seed run before the next seed.
    root: runs go to `workdir_of(root, arm, seed)`; a finished one is kept, an interrupted
      one resumes from its checkpoint.
    backbone: the configs/search_r2.py backbone, for the recorded commands.
    init_from: a workdir pattern with `{seed}` whose kept warm start every run of that seed
      starts from, so the arms differ only after the warm start; made there first
      (`ensure_warm_start`, with the first arm's config) if it is missing. "" = each run
      does its own.
    reuse: arm -> workdir pattern with `{seed}` of runs made elsewhere (e.g. the main job's
      runs as the Search-R1 arm); they must have finished.
    done: (arm, seed) pairs already recorded: skipped.
    warm_em: seed -> the test EM before RL of its recorded runs (`ablation.warm_start_em`).
      A warm start at `init_from` that scores otherwise is not the one they started from,
      so the seed's new runs could not be paired with them: ValueError before any of them
      trains.
    on_run: called with each new record as soon as its run has finished.
  """
  from sr2.train.loop import train_and_evaluate  # the training stack, only when runs are made

  reuse, done = dict(reuse or {}), set(done)
  out = []
  for seed in seeds:
    todo = [arm for arm in arms if (arm, seed) not in done]
    for arm in todo:  # reused runs are checked before any training
      if arm in reuse:
        ablation.run_row(reuse[arm].format(seed=seed))
    start = init_from.format(seed=seed) if init_from else ""
    if start and any(arm not in reuse for arm in todo):
      config = config_of(todo[0])
      config.seed = seed
      ensure_warm_start(config, start)
      if warm_em and seed in warm_em:
        check_warm_start(start, seed, warm_em[seed])
    for arm in todo:
      workdir, command = locate(
        root, arm, seed, backbone=backbone, init_from=init_from, reuse=reuse
      )
      if arm not in reuse and not ablation.is_finished(workdir):
        config = config_of(arm)
        config.seed = seed
        train_and_evaluate(config, str(workdir), start or None)
      entry = ablation.record(arm, seed, workdir, command)
      out.append(entry)
      if on_run is not None:
        on_run(entry)
  return out


def finished_runs(
  root: str | pathlib.Path,
  arms: Sequence[str],
  seeds: Sequence[int],
  *,
  backbone: str = "tiny_world",
  init_from: str = "",
  reuse: Mapping[str, str] | None = None,
  done: Iterable[tuple[str, int]] = (),
) -> tuple[list[dict[str, Any]], list[str]]:
  """The `record`s of the finished runs among arms x seeds but those `done`, and the
  others as "ARM/seedN"."""
  reuse, done = dict(reuse or {}), set(done)
  runs, missing = [], []
  for arm in arms:
    for seed in seeds:
      if (arm, seed) in done:
        continue
      workdir, command = locate(
        root, arm, seed, backbone=backbone, init_from=init_from, reuse=reuse
      )
      if ablation.is_finished(workdir):
        runs.append(ablation.record(arm, seed, workdir, command))
      else:
        missing.append(f"{arm}/seed{seed}")
  return runs, missing
