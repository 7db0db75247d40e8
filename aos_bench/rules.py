"""What a config value may be: a Rule (a test and the words for it) and the small makers of rules that checks.RULES
and the registry (aos_bench.registry) build theirs from. Importable before torch: the door checks in a blink."""

import math
from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig, OmegaConf


@dataclass(frozen=True)
class Rule:
    """What one key accepts: a test of its value, and the words that tell a user what is allowed."""

    allowed: str
    ok: Callable[[object], bool]


def show(value: object) -> str:
    """A value as a user types it on the command line: null, true, 0.1, [1, 2], abc."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list):
        return f"[{', '.join(show(v) for v in value)}]"
    return str(value)


def is_number(value: object) -> bool:
    """An int or a finite float, not a bool (YAML's true is an int to Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_class_list(value: object) -> bool:
    """A non-empty list of class names or indices (an int, not a bool)."""
    return isinstance(value, (list, ListConfig)) and len(value) >= 1 and all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in value)


def whole(minimum: int, nullable: str = "") -> Rule:
    """A whole number >= minimum; `nullable` says what null means where null is allowed."""
    allowed = f"a whole number >= {minimum}" + (f", or null ({nullable})" if nullable else "")
    return Rule(allowed, lambda v: (bool(nullable) and v is None) or (is_number(v) and isinstance(v, int) and v >= minimum))


def number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False, unit: str = "") -> Rule:
    """A number in the interval from low to high, each end open or closed."""
    interval = f"{'(' if low_open else '['}{low:g}, {'inf' if high == math.inf else f'{high:g}'}{')' if high_open else ']'}"
    words = f"a number in {interval}" if high != math.inf else f"a number {'>' if low_open else '>='} {low:g}"
    return Rule(
        words + (f" ({unit})" if unit else ""),
        lambda v: is_number(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high),
    )


def choice(*options: object) -> Rule:
    """One of the given values."""
    return Rule(f"one of: {', '.join(show(o) for o in options)}", lambda v: any(v == o and type(v) is type(o) for o in options))


def flag() -> Rule:
    """true or false."""
    return choice(True, False)


def text(nullable: str = "") -> Rule:
    """A non-empty string; `nullable` says what null means where null is allowed."""
    text = "a non-empty text" + (f", or null ({nullable})" if nullable else "")
    return Rule(text, lambda v: (bool(nullable) and v is None) or (isinstance(v, str) and v != ""))


def numbers(item: Rule, length: int | None = None, nullable: str = "") -> Rule:
    """A list whose items each pass `item` (of `length` items when given); `nullable` says what null means where allowed."""
    size = f"{length} " if length else ""
    return Rule(
        f"a list of {size}items, each {item.allowed}" + (f"; or null ({nullable})" if nullable else ""),
        lambda v: (bool(nullable) and v is None)
        or (isinstance(v, (list, ListConfig)) and len(v) >= 1 and (length is None or len(v) == length) and all(item.ok(i) for i in v)),
    )
