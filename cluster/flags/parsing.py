"""The parsing helpers the flag tables and parsers share: absl-style booleans, the valued flags'
row type, --gateway_processes' type (auto or a count) with the host facts behind auto, and
--grpc_channel_arguments' type.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from cluster.gateway import channel_args

# (flag, type, default, metavar, help) of a valued flag.
ValuedFlag = tuple[str, Callable[[str], object], object, str, str]

_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


def parse_bool(text: str) -> bool:
    """absl's boolean values: true/t/yes/y/1 and false/f/no/n/0, any case."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false/1/0, got {text!r}")


def add_bool(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, default: bool, help_text: str) -> None:
    """`--name[=BOOL]` and its negated form `--noname`, as absl parses booleans."""
    parser.add_argument(
        f"--{name}",
        type=parse_bool,
        nargs="?",
        const=True,
        default=default,
        metavar="BOOL",
        help=f"{help_text} (default: {str(default).lower()})",
    )
    # absl's negated form, e.g. --noenable_model_warmup.
    parser.add_argument(f"--no{name}", dest=name, action="store_const", const=False, help=argparse.SUPPRESS)


def host_cpus() -> int:
    """The cores this process may run on (its affinity mask, as a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_gateway_processes(cpus: int) -> int:
    """`--gateway_processes=auto` on a host with `cpus` cores: one gateway process per two cores,
    at least one, at most 8.

    A gateway process at full load keeps about one core busy and the replicas and Ray need the
    rest (benchmarks/README.md, "Gateway processes", has the measurements behind the choice: on
    2 cores, 2 processes won on an idle machine and lost on crowded ones, so 1 stays).
    """
    return max(1, min(8, cpus // 2))


def gateway_processes(text: str) -> int:
    """The type of --gateway_processes: auto (see `auto_gateway_processes`) or a count >= 0."""
    if text.strip().lower() == "auto":
        return auto_gateway_processes(host_cpus())
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a count, got {text!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"must be auto or at least 0, got {count}")
    return count


def channel_arguments(text: str) -> channel_args.ChannelArguments:
    """The type of --grpc_channel_arguments: TF Serving's k=v,k=v list (`channel_args`)."""
    try:
        return channel_args.parse_grpc_channel_arguments(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
