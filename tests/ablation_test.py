"""The ablation table from run workdirs: rows, seed means by hand, markdown, the driver."""

import json

import pytest

from sr2.train import ablation


def _run(path, before, after, steps=(), hops=(0.5, 0.25, 0.0)):
  path.mkdir(parents=True)
  evaluation = dict(em=after, searches=2.0, em_1hop=hops[0], em_2hop=hops[1], em_3hop=hops[2])
  summary = dict(em_before_rl=before, em_after_rl=after, eval_after_rl=evaluation)
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


def test_run_row_means_over_steps_and_last_trimmer_accuracy(tmp_path):
  row = ablation.run_row(_run(tmp_path / "r", 0.2, 0.4, REFINER_STEPS))
  assert row["em_before"] == 0.2 and row["em_after"] == 0.4 and row["em_2hop"] == 0.25
  assert row["step_s"] == pytest.approx(3.0)  # (2 + 4 + 3) / 3
  assert row["v_inter"] == pytest.approx(0.2)  # (0.1 + 0.3 + 0.2) / 3
  assert row["delta_j"] == pytest.approx(0.1)
  assert row["a_prec"] == pytest.approx(0.1)  # only the two probe steps: (0.05 + 0.15) / 2
  assert row["s_trim"] == pytest.approx(0.0) and row["g_bar"] == pytest.approx(0.03)
  assert row["trim_acc"] == 0.5 and row["gate_acc"] == 0.75  # the last dev evaluation


def test_a_search_r1_run_has_no_refiner_columns(tmp_path):
  row = ablation.run_row(_run(tmp_path / "r", 0.2, 0.3, [{"step_s": 1.0}]))
  assert row["v_inter"] is None and row["a_prec"] is None and row["trim_acc"] is None


def test_unfinished_run_is_named(tmp_path):
  (tmp_path / "r").mkdir()
  (tmp_path / "r" / "summary.json").write_text(json.dumps({"em_before_rl": 0.1}))
  with pytest.raises(ValueError, match=r"r: no finished run there"):
    ablation.run_row(tmp_path / "r")


def test_seed_mean_std_and_markdown(tmp_path):
  runs = {
    "search_r1": {
      s: _run(tmp_path / f"a{s}", 0.2, a, [{"step_s": 1.0}])
      for s, a in ((0, 0.3), (1, 0.5), (2, 0.4))
    },
    "mr": {0: _run(tmp_path / "m0", 0.2, 0.6, REFINER_STEPS)},
  }
  table = ablation.build_table(runs)
  em = table["search_r1"]["cells"]["em_after"]
  # mean (0.3 + 0.5 + 0.4) / 3 = 0.4; sample var ((-0.1)^2 + 0.1^2 + 0) / 2 = 0.01, std 0.1
  assert em["mean"] == pytest.approx(0.4) and em["std"] == pytest.approx(0.1)
  assert em["values"] == [0.3, 0.5, 0.4]
  md = ablation.markdown(table).splitlines()
  assert md[0].startswith("| arm | seeds | em_before | em_after |")
  assert md[2].startswith("| search_r1 | 0,1,2 | 20.0 ± 0.0 | 40.0 ± 10.0 |")
  assert md[2].endswith("| 30.0 / 50.0 / 40.0 |") and "| – |" in md[2]  # no refiner columns
  assert md[3].startswith("| mr | 0 | 20.0 | 60.0 |") and "| 20.0 |" in md[3]  # v_inter %


def test_run_arms_trains_what_is_missing_and_checks_reused_runs(tmp_path, monkeypatch):
  import ml_collections

  from sr2.train import loop as job

  calls = []

  def fake_train(config, workdir, init_from):
    calls.append((config.arm, config.seed, workdir, init_from))
    _run(tmp_path / workdir, 0.1, 0.2)

  monkeypatch.setattr(job, "train_and_evaluate", fake_train)
  for s in (0, 1):
    _run(tmp_path / "main" / f"s{s}", 0.1, 0.3)
  _run(ablation.workdir_of(tmp_path / "abl", "mr", 0), 0.1, 0.5)  # finished before: kept
  runs = ablation.run_arms(
    lambda arm: ml_collections.ConfigDict(dict(arm=arm, seed=-1)),
    ["search_r1", "mr"],
    [0, 1],
    tmp_path / "abl",
    init_from=str(tmp_path / "main" / "s{seed}"),
    reuse={"search_r1": str(tmp_path / "main" / "s{seed}")},
  )
  assert calls == [("mr", 1, str(tmp_path / "abl" / "mr" / "seed1"), str(tmp_path / "main" / "s1"))]
  assert runs["search_r1"][1] == tmp_path / "main" / "s1"
  with pytest.raises(ValueError, match="no finished run"):
    ablation.run_arms(
      lambda arm: None,
      ["search_r1"],
      [2],
      tmp_path / "abl",
      reuse={"search_r1": str(tmp_path / "main" / "s{seed}")},
    )


def test_write_results(tmp_path):
  table = ablation.build_table({"mr": {0: _run(tmp_path / "m0", 0.2, 0.6, REFINER_STEPS)}})
  ablation.write_results(table, tmp_path / "out" / "abl", {"title": "T", "command": "c"})
  got = json.loads((tmp_path / "out" / "abl.json").read_text())
  assert got["command"] == "c" and got["arms"]["mr"]["cells"]["em_after"]["mean"] == 0.6
  md = (tmp_path / "out" / "abl.md").read_text()
  assert md.startswith("# T\n\n- command: `c`\n\n| arm |")


def test_finished_runs_leave_out_and_name_the_rest(tmp_path):
  _run(tmp_path / "main" / "s0", 0.1, 0.3)
  _run(ablation.workdir_of(tmp_path / "abl", "mr", 0), 0.1, 0.5)
  ablation.workdir_of(tmp_path / "abl", "mr", 1).mkdir(parents=True)  # started, not finished
  runs, missing = ablation.finished_runs(
    tmp_path / "abl",
    ["search_r1", "mr", "mr_pr"],
    [0, 1],
    reuse={"search_r1": str(tmp_path / "main" / "s{seed}")},
  )
  assert runs == {
    "search_r1": {0: tmp_path / "main" / "s0"},
    "mr": {0: ablation.workdir_of(tmp_path / "abl", "mr", 0)},
  }
  assert missing == ["search_r1/seed1", "mr/seed1", "mr_pr/seed0", "mr_pr/seed1"]
