"""ConfigDict -> typed frozen dataclass at a module boundary, with unknown fields rejected.

Every module that takes configuration defines a frozen dataclass (`ModelConfig`,
`SamplingConfig`, ...) that validates itself in `__post_init__`. `from_config` builds one
from an ml-collections `ConfigDict` (or a plain mapping) and refuses keys the dataclass
does not have, naming the config path and suggesting the closest field, so a typo fails
before anything compiles.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
  """A configuration field is unknown, missing or inconsistent."""


def as_dict(cfg: Any) -> dict[str, Any]:
  """A ConfigDict (through its `to_dict`) or a mapping as a plain dict; ConfigError otherwise."""
  if hasattr(cfg, "to_dict"):
    return cfg.to_dict()
  if isinstance(cfg, Mapping):
    return dict(cfg)
  raise ConfigError(f"expected a ConfigDict or mapping, got {type(cfg).__name__}")


def check_keys(keys, allowed, where: str, required=()) -> None:
  """Raises ConfigError naming each key of `keys` not in `allowed` (with a suggestion) and
  each key of `required` that is missing."""
  keys = list(keys)
  missing = [k for k in required if k not in keys]
  if missing:
    raise ConfigError(
      "; ".join(f"missing field '{where}.{k}'" for k in missing)
      + " (start from a config in configs/ to see every field)"
    )
  allowed = sorted(allowed)
  unknown = [k for k in keys if k not in allowed]
  if not unknown:
    return
  lines = []
  for k in unknown:
    close = difflib.get_close_matches(k, allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    lines.append(f"unknown field '{where}.{k}'{hint}")
  raise ConfigError("; ".join(lines) + f". Known fields of '{where}': {', '.join(allowed)}")


def from_config(cls: type[T], cfg: Any, where: str, **overrides: Any) -> T:
  """Builds dataclass `cls` from `cfg`, rejecting unknown keys.

  Args:
    cls: a (frozen) dataclass type; its `__post_init__` does the value checks.
    cfg: ConfigDict or mapping holding a subset of `cls`'s fields.
    where: the config path for messages, e.g. "config.model".
    **overrides: values that take precedence over `cfg` (e.g. derived fields).

  Returns:
    An instance of `cls`.
  """
  values = as_dict(cfg)
  values.update(overrides)
  field_names = {f.name for f in dataclasses.fields(cls) if f.init}
  check_keys(values.keys(), field_names, where)
  try:
    return cls(**values)
  except TypeError as e:  # a required field is missing
    raise ConfigError(f"{where}: {e}") from None
  except ConfigError as e:
    raise ConfigError(f"{where}: {e}") from None


def is_int_at_least(value: Any, minimum: int) -> bool:
  """Whether `value` is an int (a bool does not count) and at least `minimum`."""
  return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_ints(
  obj: Any, where: str, names: Iterable[str], minimum: int = 1, error: type[Exception] = ConfigError
) -> None:
  """Raises `error` "<where>.<name>=<value>; expected an int >= <minimum>" for the first field
  of `obj` named in `names` that is not such an int (`__post_init__` checks of count fields)."""
  for name in names:
    value = getattr(obj, name)
    if not is_int_at_least(value, minimum):
      raise error(f"{where}.{name}={value!r}; expected an int >= {minimum}")


def check_choices(
  obj: Any,
  where: str,
  choices: Mapping[str, Sequence[str]],
  error: type[Exception] = ConfigError,
) -> None:
  """Raises `error` "<where>.<name>=<value>; expected one of <choices>" for the first field
  of `obj` named in `choices` whose value is not one of its choices (`__post_init__` checks
  of fields that name an option)."""
  for name, allowed in choices.items():
    value = getattr(obj, name)
    if value not in allowed:
      raise error(f"{where}.{name}={value!r}; expected one of {allowed}")


def load_config_file(path: str | os.PathLike, arg: str | None = None):
  """`get_config(arg)` of a config file (`get_config()` without `arg`), as `--config path:arg`
  gives it to an entry point, but unlocked, for drivers that run several configs."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"config file {path} does not exist")
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} has no get_config()")
  return module.get_config() if arg is None else module.get_config(arg)
