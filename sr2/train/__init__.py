"""The training experiment around the RL core (`sr2.rl`).

loop.py        the job, top to bottom (`train_and_evaluate`), and one GRPO step
state.py       `TrainState`: what a step changes and a checkpoint holds
setup.py       the config checked into typed groups, the mesh's shardings, the task
task/          what a run learns on: questions, retriever, tokenizer, model (world.py, qa.py)
warm_start.py  where GRPO starts (SFT or the checkpoint), and the policy's HF export
collect.py     one step's experience: rollouts, the Meta-Refiner, rewards, probes
rewards.py     the run's reward function (outcome, optionally process)
sft.py         the supervised warm start
evaluation.py  greedy evaluation inside a run, and the gate's and Trimmer's accuracy
metrics.py     JSONL, TensorBoard and the curves
ablation.py    an ablation's record: a row per run, seed means, paired differences, tables
ablation_runs.py  the ablation's runs: arms x seeds from shared warm starts, resumable
"""
