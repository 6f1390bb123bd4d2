"""The flags every entry point shares to join a multi-process job, and `initialize_from_flags`.

  python experiments/train.py --config ... --workdir DIR \\
      --coordinator_address=10.0.0.2:8476 --num_processes=2 --process_id=0

On a Cloud TPU VM slice no flag is needed: JAX finds its workers itself. `--cpu_devices N`
gives each process N fake CPU devices (tests, laptops).
"""

from __future__ import annotations

from absl import flags

from sr2.parallel import hosts

COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0 of a multi-process job."
)
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's number, 0-based.")
CPU_DEVICES = flags.DEFINE_integer(
  "cpu_devices", 0, "Fake CPU devices per process (0: the platform's own devices)."
)
TIMEOUT = flags.DEFINE_integer(
  "distributed_timeout", 300, "Seconds to wait for every process to reach the coordinator."
)


def initialize_from_flags() -> None:
  """`hosts.initialize` with the flags above; call first thing in `main`."""
  if CPU_DEVICES.value < 0:
    raise ValueError(f"--cpu_devices={CPU_DEVICES.value}; expected >= 0")
  hosts.initialize(
    COORDINATOR.value,
    NUM_PROCESSES.value,
    PROCESS_ID.value,
    cpu_devices=CPU_DEVICES.value,
    timeout_s=TIMEOUT.value,
  )
