"""The ablation record from run workdirs: rows, seed means and paired differences by hand,
markdown, the driver that skips what is recorded and makes the shared warm start."""

import json

import pytest

from sr2.train import ablation, ablation_runs


def _run(path, before, after, steps=(), hops=(0.5, 0.25, 0.0), trimmer=None):
  path.mkdir(parents=True)
  evaluation = dict(em=after, searches=2.0, em_1hop=hops[0], em_2hop=hops[1], em_3hop=hops[2])
  summary = dict(em_before_rl=before, em_after_rl=after, eval_after_rl=evaluation)
  if trimmer is not None:
    summary["trimmer_before_rl"] = trimmer
  (path / "summary.json").write_text(json.dumps(summary))
  rows = [{"phase": "sft", "step": 0, "sft_loss": 1.0}]
  rows += [{"phase": "rl", "step": i + 1, **r} for i, r in enumerate(steps)]
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


REFINER_STEPS = (
  {"step_s": 2.0, "refiner/v_inter": 0.1, "refiner/delta_j": 0.0},
  {
    "step_s": 4.0,
    "refiner/v_inter": 0.3,
    "refiner/delta_j": 0.2,
    "drivers/a_prec": 0.05,
    "drivers/s_trim": -0.1,
    "drivers/g_bar": 0.02,
    "trimmer/gate_acc": 0.5,
    "trimmer/trim_acc": 0.25,
  },
  {
    "step_s": 3.0,
    "refiner/v_inter": 0.2,
    "refiner/delta_j": 0.1,
    "drivers/a_prec": 0.15,
    "drivers/s_trim": 0.1,
    "drivers/g_bar": 0.04,
    "trimmer/gate_acc": 0.75,
    "trimmer/trim_acc": 0.5,
  },
)


def test_run_row_means_over_steps_and_trimmer_accuracy_before_and_last(tmp_path):
  trimmer = {"gate_acc": 0.5, "trim_acc": 1.0}
  row = ablation.run_row(_run(tmp_path / "r", 0.2, 0.4, REFINER_STEPS, trimmer=trimmer))
  assert row["em_before_rl"] == 0.2 and row["em_after_rl"] == 0.4 and row["em_2hop"] == 0.25
  assert row["step_s"] == pytest.approx(3.0)  # (2 + 4 + 3) / 3
  assert row["v_inter"] == pytest.approx(0.2)  # (0.1 + 0.3 + 0.2) / 3
  assert row["delta_j"] == pytest.approx(0.1)
  assert row["a_prec"] == pytest.approx(0.1)  # only the two probe steps: (0.05 + 0.15) / 2
  assert row["s_trim"] == pytest.approx(0.0) and row["g_bar"] == pytest.approx(0.03)
  assert row["trimmer_acc"] == 0.5 and row["gate_acc"] == 0.75  # the last dev evaluation
  assert row["gate_acc_before"] == 0.5 and row["trimmer_acc_before"] == 1.0


def test_a_search_r1_run_has_no_refiner_columns(tmp_path):
  row = ablation.run_row(_run(tmp_path / "r", 0.2, 0.3, [{"step_s": 1.0}]))
  assert row["v_inter"] is None and row["a_prec"] is None and row["trimmer_acc"] is None
  assert row["gate_acc_before"] is None


def test_unfinished_run_is_named(tmp_path):
  (tmp_path / "r").mkdir()
  (tmp_path / "r" / "summary.json").write_text(json.dumps({"em_before_rl": 0.1}))
  with pytest.raises(ValueError, match=r"r: no finished run there"):
    ablation.run_row(tmp_path / "r")


def _runs(tmp_path):
  runs = [
    ablation.record("search_r1", s, _run(tmp_path / f"a{s}", 0.2, a, [{"step_s": 1.0}]), "c")
    for s, a in ((0, 0.3), (1, 0.5), (2, 0.4))
  ]
  runs += [
    ablation.record("mr", s, _run(tmp_path / f"m{s}", 0.2, a, REFINER_STEPS), "c")
    for s, a in ((2, 0.6), (0, 0.4))
  ]
  return runs


def test_seed_mean_std_paired_differences_and_markdown(tmp_path):
  grouped = ablation.by_arm(_runs(tmp_path), ["search_r1", "mr", "mr_pr"])
  assert list(grouped) == ["search_r1", "mr"] and [r["seed"] for r in grouped["mr"]] == [0, 2]
  em = ablation.arm_cells(grouped["search_r1"])["em_after_rl"]
  # mean (0.3 + 0.5 + 0.4) / 3 = 0.4; sample var ((-0.1)^2 + 0.1^2 + 0) / 2 = 0.01, std 0.1
  assert em["mean"] == pytest.approx(0.4) and em["std"] == pytest.approx(0.1)
  assert em["values"] == [0.3, 0.5, 0.4]
  # mr - search_r1 by seed: seed 0: 0.4 - 0.3 = +0.1; seed 2: 0.6 - 0.4 = +0.2.
  # mean 0.15; sample sd sqrt(((-0.05)^2 + 0.05^2) / 1) = 0.0707; SE = 0.0707 / sqrt(2) = 0.05
  d = ablation.paired(grouped)["mr"]
  assert d["seeds"] == [0, 2] and d["diffs"] == pytest.approx([0.1, 0.2])
  assert d["mean"] == pytest.approx(0.15) and d["se"] == pytest.approx(0.05)
  md = ablation.markdown(grouped).splitlines()
  assert md[0].startswith("| arm | seeds | em_before_rl | em_after_rl |")
  assert md[2].startswith("| search_r1 | 0,1,2 | 20.0 ± 0.0 | 40.0 ± 10.0 |")
  assert md[2].endswith("| 30.0 / 50.0 / 40.0 |") and "| – |" in md[2]  # no refiner columns
  assert md[3].startswith("| mr | 0,2 | 20.0 ± 0.0 | 50.0 ± 14.1 |")
  assert "| mr | 0,2 | +10.0 / +20.0 | +15.0 ± 5.0 |" in md
  short = ablation.markdown(grouped, columns=("em_after_rl", "v_inter")).splitlines()
  assert short[0] == "| arm | seeds | em_after_rl | v_inter | EM after, per seed |"
  # v_inter: seed means (0.1 + 0.3 + 0.2) / 3 = 0.2 in each mr run -> 20.0 ± 0.0 percent
  assert short[3] == "| mr | 0,2 | 50.0 ± 14.1 | 20.0 ± 0.0 | 40.0 / 60.0 |"
  with pytest.raises(ValueError, match="'em'"):
    ablation.markdown(grouped, columns=("em",))


def test_run_arms_skips_recorded_runs_makes_the_warm_start_and_checks_reused_runs(
  tmp_path, monkeypatch
):
  import ml_collections

  from sr2.train import loop as job

  calls = []

  def fake_train(config, workdir, init_from=None):
    calls.append((config.arm, config.seed, workdir, init_from, config.rl.steps))
    if config.rl.steps == 0:  # a warm start for the others
      (tmp_path / workdir / "warm_start").mkdir(parents=True)
    else:
      _run(tmp_path / workdir, 0.1, 0.2)

  monkeypatch.setattr(job, "train_and_evaluate", fake_train)
  for s in (0, 1, 2):
    _run(tmp_path / "main" / f"s{s}", 0.1, 0.3)
  argv = ["experiments/train.py", "--workdir", "main/s0", "--config.x=a b"]
  (tmp_path / "main" / "s0" / "run.json").write_text(
    json.dumps({"commit": "0123456789", "argv": argv})
  )
  (tmp_path / "ws" / "s0" / "warm_start").mkdir(parents=True)  # seed 0's exists already
  _run(ablation_runs.workdir_of(tmp_path / "abl", "mr", 0), 0.1, 0.5)  # finished before: read
  config_of = lambda arm: ml_collections.ConfigDict(
    dict(arm=arm, seed=-1, rl=dict(steps=5, keep_warm_start=False))
  )
  seen = []
  runs = ablation_runs.run_arms(
    config_of,
    ["search_r1", "mr", "mr_pr"],
    [0, 1],
    tmp_path / "abl",
    init_from=str(tmp_path / "ws" / "s{seed}"),
    reuse={"search_r1": str(tmp_path / "main" / "s{seed}")},
    done=[("mr_pr", 0)],
    on_run=seen.append,
  )
  ws1, abl = str(tmp_path / "ws" / "s1"), tmp_path / "abl"
  assert calls == [
    ("search_r1", 1, ws1, None, 0),  # seed 1's warm start, with the first arm's config
    ("mr", 1, str(abl / "mr" / "seed1"), ws1, 5),
    ("mr_pr", 1, str(abl / "mr_pr" / "seed1"), ws1, 5),
  ]
  assert [(r["arm"], r["seed"]) for r in runs] == [
    ("search_r1", 0),
    ("mr", 0),
    ("search_r1", 1),
    ("mr", 1),
    ("mr_pr", 1),
  ]
  assert seen == runs and runs[1]["em_after_rl"] == 0.5
  assert runs[3]["command"] == (
    "python experiments/train.py --config configs/search_r2.py:tiny_world,mr "
    f"--workdir {abl / 'mr' / 'seed1'} --config.seed=1 --init_from {ws1}"
  )
  assert runs[0]["command"] == (
    "(reused, made at 0123456) python experiments/train.py --workdir main/s0 '--config.x=a b'"
  )
  assert runs[2]["command"] == f"(reused) {tmp_path / 'main' / 's1'}"  # no run.json there
  with pytest.raises(ValueError, match="no finished run"):
    ablation_runs.run_arms(
      config_of,
      ["search_r1"],
      [5],
      tmp_path / "abl",
      reuse={"search_r1": str(tmp_path / "main" / "s{seed}")},
    )


def test_write_and_read_results(tmp_path):
  runs = _runs(tmp_path)
  ablation.write_results(tmp_path / "out" / "abl", runs, ["search_r1", "mr"], {"title": "T"})
  got = json.loads((tmp_path / "out" / "abl.json").read_text())
  assert got["runs"] == runs and ablation.read_results(tmp_path / "out" / "abl") == runs
  assert got["arms"]["mr"]["em_after_rl"]["mean"] == pytest.approx(0.5)
  assert got["paired"]["mr"]["mean"] == pytest.approx(0.15)
  md = (tmp_path / "out" / "abl.md").read_text()
  assert md.startswith("# T\n\n\n| arm |")
  assert ablation.read_results(tmp_path / "none") == []


def test_finished_runs_leave_out_and_name_the_rest(tmp_path):
  _run(tmp_path / "main" / "s0", 0.1, 0.3)
  _run(ablation_runs.workdir_of(tmp_path / "abl", "mr", 0), 0.1, 0.5)
  ablation_runs.workdir_of(tmp_path / "abl", "mr", 1).mkdir(parents=True)  # started, not finished
  runs, missing = ablation_runs.finished_runs(
    tmp_path / "abl",
    ["search_r1", "mr", "mr_pr"],
    [0, 1],
    reuse={"search_r1": str(tmp_path / "main" / "s{seed}")},
    done=[("mr_pr", 1)],
  )
  assert [(r["arm"], r["seed"]) for r in runs] == [("search_r1", 0), ("mr", 0)]
  assert missing == ["search_r1/seed1", "mr/seed1", "mr_pr/seed0"]


def test_a_new_seed_against_the_reference_arm(tmp_path):
  reference = _runs(tmp_path)  # search_r1 EM after: 0.3, 0.5, 0.4 (seeds 0-2)
  new = {"arm": "search_r1", "seed": 3, "em_after_rl": 0.55}
  c = ablation.against(reference, new)
  # mean 0.4, sample std 0.1, SE 0.1 / sqrt(3) = 0.05774; z = 0.15 / 0.05774 = 2.598
  assert c["mean"] == pytest.approx(0.4) and c["se"] == pytest.approx(0.1 / 3**0.5)
  assert c["z"] == pytest.approx(2.598, abs=1e-3) and not c["within"]
  assert ablation.against(reference, {**new, "em_after_rl": 0.35})["within"]  # z = -0.87
  with pytest.raises(ValueError, match="already in the reference"):
    ablation.against(reference, {**new, "seed": 1})
  with pytest.raises(ValueError, match="'mr_pr': 0 reference run"):
    ablation.against(reference, {**new, "arm": "mr_pr"})


def test_runs_of_a_seed_from_different_warm_starts_are_not_paired(tmp_path):
  runs = _runs(tmp_path)  # every run starts at 0.2
  assert ablation.warm_start_em(runs) == {0: 0.2, 1: 0.2, 2: 0.2}
  odd = ablation.record("mr_pr", 1, _run(tmp_path / "p1", 0.25, 0.5), "c")
  with pytest.raises(ValueError, match=r"seed 1: .*search_r1 20\.0%, mr_pr 25\.0%"):
    ablation.warm_start_em([*runs, odd])
  with pytest.raises(ValueError, match="one warm start"):
    ablation.paired(ablation.by_arm([*runs, odd], ["search_r1", "mr", "mr_pr"]))
  with pytest.raises(ValueError, match="one warm start"):  # the record is not written
    ablation.write_results(tmp_path / "out", [*runs, odd], ["search_r1", "mr_pr"], {})
  assert not (tmp_path / "out.json").exists()


def test_run_arms_refuses_a_warm_start_its_seeds_recorded_runs_did_not_start_from(
  tmp_path, monkeypatch
):
  import ml_collections

  from sr2.train import loop as job

  calls = []

  def fake_train(config, workdir, init_from=None):
    calls.append((config.arm, config.seed))
    _run(tmp_path / workdir, 0.2, 0.3)

  monkeypatch.setattr(job, "train_and_evaluate", fake_train)
  for seed, em in ((0, 0.2), (1, 0.25)):
    (tmp_path / "ws" / f"s{seed}" / "warm_start").mkdir(parents=True)
    (tmp_path / "ws" / f"s{seed}" / "summary.json").write_text(json.dumps({"em_before_rl": em}))
  config_of = lambda arm: ml_collections.ConfigDict(
    dict(arm=arm, seed=-1, rl=dict(steps=5, keep_warm_start=False))
  )
  kw = dict(init_from=str(tmp_path / "ws" / "s{seed}"), done=[("search_r1", 1)])
  with pytest.raises(ValueError, match=r"seed 1: .* scores test EM 25\.0% .* scoring 20\.0%"):
    ablation_runs.run_arms(
      config_of, ["search_r1", "mr"], [1], tmp_path / "abl", warm_em={1: 0.2}, **kw
    )
  assert calls == []  # nothing trained
  kw["done"] = [("search_r1", 0)]
  runs = ablation_runs.run_arms(  # seed 0's warm start is its recorded runs' one
    config_of, ["search_r1", "mr"], [0], tmp_path / "abl", warm_em={0: 0.2}, **kw
  )
  assert calls == [("mr", 0)] and runs[0]["em_before_rl"] == 0.2
  (tmp_path / "ws" / "s1" / "summary.json").unlink()
  with pytest.raises(ValueError, match="no em_before_rl"):
    ablation_runs.run_arms(
      config_of, ["search_r1", "mr"], [1], tmp_path / "abl", warm_em={1: 0.25}, **kw
    )
