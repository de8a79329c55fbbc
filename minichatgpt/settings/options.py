"""One option mechanism for every command: a row names an option's flag, the config field it sets, its bounds and
its help; each command's parser and its checks are made from its rows.

    Option("--lr", "ppo.lr", "PPO learning rate", stage="ppo", above=0)

A command's rows point into one config object (RunConfig for the main job, CompareConfig, OveroptConfig, ...),
whose dataclass holds the default, so each default is written once. `add_arguments` makes the argparse arguments,
`values_of` reads them back as {field: value}, `check` holds every value to its row's bounds and the command's
rules (options that must agree), and `replace_fields` builds the config. A refusal names an option as its reader
knows it: by its flag on the command line, by its field in Python.
"""
import argparse
import dataclasses
import math
from typing import Optional


class UsageError(Exception):
    """The command line asks for something that cannot be done; nothing has started."""


class Parser(argparse.ArgumentParser):
    def error(self, message):      # argparse would print the whole usage; one line is enough
        raise UsageError(message)


@dataclasses.dataclass(frozen=True)
class Option:
    flag: str                          # on the command line
    field: str                         # "seed" on the command's config, or "section.name" on one of its sections
    help: str
    stage: str = ""                    # the main job: the first stage whose result it shapes; "" if it shapes none
                                       # (a budget, a checkpoint period; --corpus is recorded by the hash of what it
                                       # loads, not by its spelling)
    at_least: Optional[float] = 1      # numbers: the smallest value allowed (None: no lower bound)
    above: Optional[float] = None      # numbers: the value must be greater than this (instead of at_least)
    at_most: Optional[float] = None    # numbers: the largest value allowed
    kind: Optional[type] = None        # the type of a value whose default does not show it (None)
    many: bool = False                 # one or more values (a tuple in the config)
    choices: Optional[tuple] = None
    why: str = ""                      # what a refusal of the bounds adds

    def bound(self):
        """The bounds as a refusal states them: ">= 1", "> 0", "in (0, 1]" ("" for none)."""
        if self.at_most is not None:
            low = f"({self.above:g}" if self.above is not None else f"[{self.at_least:g}"
            return f"in {low}, {self.at_most:g}]"
        if self.above is not None:
            return f"> {self.above:g}"
        return f">= {self.at_least:g}" if self.at_least is not None else ""

    def allows(self, value):
        low = value > self.above if self.above is not None else self.at_least is None or value >= self.at_least
        return low and (self.at_most is None or value <= self.at_most)


def get(config, field):
    """The value of a field ("seed" or "section.name") of a config object; a section may be a dict."""
    for part in field.split("."):
        config = config[part] if isinstance(config, dict) else getattr(config, part)
    return config


def _replaced(section, fields):
    return {**section, **fields} if isinstance(section, dict) else dataclasses.replace(section, **fields)


def replace_fields(config, values):
    """A copy of a (frozen) dataclass with {field: value} set, "section.name" fields in their sections (dataclasses
    or dicts)."""
    top = {k: v for k, v in values.items() if "." not in k}
    sections = {}
    for key, value in values.items():
        if "." in key:
            section, name = key.split(".")
            sections.setdefault(section, {})[name] = value
    return dataclasses.replace(config, **top, **{section: _replaced(getattr(config, section), fields)
                                                 for section, fields in sections.items()})


def check_value(option, value, name):
    """Refuse (ValueError) a number outside the option's bounds, or not finite, naming it `name`."""
    for v in value if option.many and value is not None else (value,):
        if v is None or isinstance(v, (bool, str)):
            continue
        if not math.isfinite(v) or not option.allows(v):
            what = option.bound() if math.isfinite(v) else f"a finite number {option.bound()}".strip()
            raise ValueError(f"{name} {v} is out of range: {name} must be {what}"
                             + (f" ({option.why})" if option.why else ""))


def check(values, options, config, rules=None, by_flag=False):
    """Check each value against its row, then the rules that relate several -> None, or ValueError.

    values: {field: value} (fields not given keep config's). rules(value, name): raises ValueError when options
    disagree; value(field) is the value to check, name(field) how to call it: its flag (by_flag, on the command
    line) or its field (in Python).
    """
    by_field = {o.field: o for o in options}

    def name(field):
        return by_field[field].flag if by_flag and field in by_field else field

    for field, value in values.items():
        if field in by_field:
            check_value(by_field[field], value, name(field))
    if rules is not None:
        rules(lambda field: values[field] if field in values else get(config, field), name)


def multiple_of(value, name, field, of, hint=False):
    """Refuse value(field) that is not a multiple of value(of); hint: also name the largest divisor that would do."""
    a, b = value(field), value(of)
    if a % b:
        use = f"; use {name(of)} {largest_divisor(a, b)}" if hint else ""
        raise ValueError(f"{name(field)} {a} must be a multiple of {name(of)} {b}{use}")


def largest_divisor(n, at_most):
    return max(d for d in range(1, at_most + 1) if n % d == 0)


def splits_into(value, name, field, fixed=(), adjustable=(), even=""):
    """Refuse value(field) unless every field of `fixed` and of `adjustable` divides it, and it is even when `even`
    says why it must be: one refusal naming every violation, and one change that satisfies them all. The hint keeps
    the fixed sizes (a method's group) and, if they divide it, the batch; otherwise it moves the batch up to the next
    whole number of them. Then it lowers each adjustable size (a chunk, a mini-batch) that does not divide that batch
    to its largest divisor below it."""
    batch = value(field)
    wrong = [f"a multiple of {name(f)} {value(f)}" for f in (*fixed, *adjustable) if batch % value(f)]
    if even and batch % 2:
        wrong.append(f"even ({even})")
    if not wrong:
        return
    need = math.lcm(*(value(f) for f in fixed), 2 if even else 1)
    change = {field: -(-batch // need) * need}
    change.update({f: largest_divisor(change[field], value(f)) for f in adjustable})
    use = " ".join(f"{name(f)} {v}" for f, v in change.items() if v != value(f))
    raise ValueError(f"{name(field)} {batch} must be {' and '.join(wrong)}; use {use}")


def add_arguments(parser, options, config):
    """One argparse argument per row, its default the field's value in config."""
    for o in options:
        default = get(config, o.field)
        if isinstance(default, bool):
            parser.add_argument(o.flag, default=default, action=argparse.BooleanOptionalAction, help=o.help)
        elif o.many:
            shown = "none" if default is None else " ".join(map(str, default))
            parser.add_argument(o.flag, type=o.kind, nargs="+", default=default, help=f"{o.help} (default: {shown})")
        else:
            parser.add_argument(o.flag, type=o.kind or type(default), default=default, choices=o.choices,
                                help=f"{o.help} (default: {'none' if default is None else default})")


def dest(option):
    """The attribute argparse stores the option under."""
    return option.flag[2:].replace("-", "_")


def given_fields(parser, argv, options):
    """The fields of the rows whose flag argv gives, spelled out, abbreviated or as --no-<flag>, whatever its value
    (argv parses: the parser has refused it otherwise) -> set. Found by parsing again with every default replaced
    by a marker that no given value can equal."""
    marker = object()
    dests = [dest(o) for o in options if any(a.dest == dest(o) for a in parser._actions)]
    saved = {d: parser.get_default(d) for d in dests}
    parser.set_defaults(**{d: marker for d in dests})
    try:
        args = parser.parse_args(argv)
    finally:
        parser.set_defaults(**saved)
    return {o.field for o in options if dest(o) in saved and getattr(args, dest(o)) is not marker}


def values_of(args, options):
    """{field: value} of every row the parsed args hold (lists of many values as tuples)."""
    values = {}
    for o in options:
        if hasattr(args, dest(o)):
            value = getattr(args, dest(o))
            values[o.field] = tuple(value) if o.many and value is not None else value
    return values


def checked(args, options, config, rules=None):
    """The parsed args' {field: value}, every value checked as `check` does, naming flags -> dict, or UsageError."""
    values = values_of(args, options)
    try:
        check(values, options, config, rules, by_flag=True)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return values


def check_config(config, options, rules=None):
    """A config object's own check (from its __post_init__): its rows' bounds and its rules, naming fields."""
    check({o.field: get(config, o.field) for o in options}, options, config, rules)
