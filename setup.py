"""sr2: Search-R2 in JAX. `pip install -e .` (add `[test]` for the test suite)."""

import setuptools

setuptools.setup(
  name="sr2",
  version="0.1.0",
  description="Search-R2: RL for search agents with an Actor and a Meta-Refiner, in JAX/Flax.",
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  packages=setuptools.find_packages(include=["sr2", "sr2.*"]),
  python_requires=">=3.11",
  install_requires=[
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "transformers>=5.0",  # tokenizers and configs only; v5 has no Flax models
    "tensorflow-datasets>=4.9.10",  # used without TensorFlow (array_record sources)
    "ml-collections>=1.1.0",
    "rank-bm25>=0.2.2",  # reference BM25 for tests
    "bm25s>=0.3.16",
    "safetensors>=0.8.0",
    "gguf>=0.19.0",
    "absl-py",
    "chex",
    "tqdm",
    "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    "matplotlib>=3.8",  # the training-curves PNG
    "numpy",
    "scipy",
  ],
  extras_require={
    # torch (+ accelerate for HF's GGUF loader) is a reference implementation in tests only;
    # 2.13.0 is the CPU build on this machine's disk.
    "test": ["pytest", "hypothesis", "ruff", "torch==2.13.0", "accelerate"],
    # Accelerators: JAX's own extras (libtpu; CUDA 12 wheels). Pin them to the installed
    # jax version if pip would otherwise move jax.
    "tpu": ["jax[tpu]>=0.10.2"],
    "cuda12": ["jax[cuda12]>=0.10.2"],
  },
)
