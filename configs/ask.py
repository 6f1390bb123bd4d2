"""Ask a model one question through its chat template (greedy by default).

  python experiments/ask.py --config configs/ask.py --question "What is the capital of France?"
  python experiments/ask.py --config configs/ask.py:qwen2.5-coder-0.5b-instruct --question "..."
  python experiments/ask.py --config configs/ask.py --config.sampling.method=top_p --question "..."

The argument after ':' is the model source: a named model, an HF checkpoint directory or a
.gguf file. Prints one JSON object: the answer, its token count, why it stopped and timings.
"""

import ml_collections


def get_config(arg: str = "smollm2-135m-instruct") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(
    dict(
      source=arg,  # named model, HF checkpoint dir, .gguf path, or preset:<name>
      dtype="float32",  # params dtype: float32 | bfloat16
      seed=0,  # init seed, for preset: sources only
    )
  )
  config.sampling = ml_collections.ConfigDict(
    dict(
      method="greedy",  # greedy | temperature | top_k | top_p
      temperature=1.0,  # softmax temperature (non-greedy methods)
      top_k=50,  # tokens kept by top_k
      top_p=0.9,  # probability mass kept by top_p
      max_len=2048,  # row capacity in tokens: prompt + answer
      stop_strings=(),  # extra strings that end the answer; EOS always does
    )
  )
  config.max_new_tokens = 256  # answer length cap in tokens
  config.system_prompt = ""  # optional system message
  config.seed = 0  # sampling seed
  return config
