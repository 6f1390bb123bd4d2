#!/usr/bin/env bash
# SmolLM2-135M-Instruct on one GPU, end to end, printing its figures:
#   1. SFT warm start on the multi-hop train rows' gold search trajectories,
#   2. 50 GRPO steps (Search-R1 arm), the test EM before and after,
#   3. the agent on the first 100 dev questions of HotpotQA, 2WikiMultihopQA and MuSiQue.
#
#   bash experiments/gpu_smollm2.sh [DIR]        (default DIR: /tmp/sr2_gpu_smollm2)
#
# Needs `pip install -e '.[cuda12]'` and the QA data under $SR2_DATA (README, "Data").
# TRAIN_FLAGS / EVAL_FLAGS add flags to the two commands, e.g. a CPU dry run at toy sizes:
#   TRAIN_FLAGS="--config.sft.steps=2 --config.sft.batch_size=2 --config.rl.steps=1
#     --config.rl.prompts_per_step=2 --config.grpo.group_size=2 --config.grpo.micro_batch_rows=4
#     --config.data.eval_limit=4"
#   EVAL_FLAGS="--limit 4" bash experiments/gpu_smollm2.sh /tmp/dry
# Target: about 10 minutes on one H100 (configs/search_r2.py, `_on_one_gpu`).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/tmp/sr2_gpu_smollm2}
ARM=${ARM:-search_r1}
SECONDS=0
python experiments/train.py --config "configs/search_r2.py:smollm2,${ARM},gpu" --workdir "$DIR/train" \
  ${TRAIN_FLAGS:-}
train_s=$SECONDS
for set in hotpotqa 2wikimultihopqa musique; do
  python experiments/evaluate.py --config "configs/smollm2_hotpotqa.py:${set}" \
    --workdir "$DIR/eval_${set}" --config.model.source="$DIR/train/final/hf" \
    --config.eval.methods="('agent',)" ${EVAL_FLAGS:-}
done
python - "$DIR" "$train_s" "$SECONDS" <<'PY'
import json, pathlib, sys
d, train_s, total_s = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
s = json.loads((d / "train" / "summary.json").read_text())
print(f"\ntrain+eval in training: {train_s} s; everything: {total_s} s")
print(f"HotpotQA dev EM before RL {s['em_before_rl']:.3f}, after {s['em_after_rl']:.3f}")
print("| set | EM | F1 | valid search | answered | searches |\n|---|---|---|---|---|---|")
for r in (json.loads((p / "eval" / "results.json").read_text())["rows"][0]
          for p in sorted(d.glob("eval_*"))):
  print(f"| {r['dataset']} | {r['em']:.3f} | {r['f1']:.3f} | {r['valid_search_rate']:.2f} "
        f"| {r['answer_rate']:.2f} | {r['mean_searches']:.2f} |")
PY
