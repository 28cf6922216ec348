"""Argument checks shared by the modules, with errors that name the argument."""

import numbers


def positive_int(name: str, value) -> int:
    """`value` as an int, or a ValueError naming `name` unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)
