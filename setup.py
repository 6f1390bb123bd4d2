"""sr2: Search-R2 in JAX. `pip install -e .` (add `[test]` for the test suite)."""

import setuptools

setuptools.setup(
  name="sr2",
  version="0.1.0",
  description="Search-R2: RL for search agents with an Actor and a Meta-Refiner, in JAX.",
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  packages=setuptools.find_packages(include=["sr2", "sr2.*"]),
  python_requires=">=3.11",
  # What sr2 imports at run time. Optional parts are extras, imported only where used.
  install_requires=[
    "jax>=0.10.2",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "etils[epath]",  # workdirs and data paths that may be gs:// (sr2.files)
    "transformers>=5.0",  # tokenizers and configs only; v5 has no Flax models
    "tokenizers",
    "ml-collections>=1.1.0",
    "safetensors>=0.8.0",
    "gguf>=0.19.0",
    "absl-py",
    "tqdm",
    "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    "matplotlib>=3.8",  # the training-curves PNG
    "numpy",
    "scipy",
  ],
  extras_require={
    # QA sets as tfds datasets (experiments/prepare_data.py, config.data.tfds_dir); read
    # without TensorFlow, from array_record files.
    "data": ["tensorflow-datasets>=4.9.10"],
    # gs:// workdirs and data: epath reaches GCS through fsspec's gcsfs.
    "gcs": ["gcsfs"],
    # Reference BM25 implementations the retrieval benchmark compares against.
    "bench": ["bm25s>=0.3.16", "rank-bm25>=0.2.2"],
    # The test suite: references (torch and HF transformers for the models, rank-bm25 for BM25),
    # and a Jupyter kernel to execute the notebooks. Any torch build works; a CPU one is
    # enough (README: "Tests").
    "test": [
      "pytest",
      "hypothesis",
      "ruff",
      "chex",
      "torch",
      "accelerate",
      "tensorflow-datasets>=4.9.10",
      "bm25s>=0.3.16",
      "rank-bm25>=0.2.2",
      "nbformat",
      "nbclient",
      "ipykernel",
    ],
    # Accelerators: JAX's own extras (libtpu; CUDA 12 wheels), plus GCS for workdirs on a
    # TPU VM. Pin jax[...] to the installed jax version if pip would otherwise move jax.
    "tpu": ["jax[tpu]>=0.10.2", "gcsfs"],
    "cuda12": ["jax[cuda12]>=0.10.2"],
  },
)
