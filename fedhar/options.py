"""The command line's shared vocabulary: one parser class, one help format, one way to read
name lists and to say "unknown NAME (did you mean ...)".

Every sub-command uses these, so `--out-dir`, `--data a,b`, `--heldout-data`, `--seed(s)` and
`--synthetic-*` mean the same everywhere and every mistake reads `fedhar: error: ...` (exit 2).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import re
import sys
from collections.abc import Callable, Iterable

from fedhar.errors import FedharError

#: LoRA ranks every command accepts: 1..the MAE's width (fedhar.model.mae.MAEConfig.dim; a
#: higher rank adds nothing). Here, not in the model, so that option checks do not import torch.
MAX_RANK = 192

#: The synthetic data every sub-command generates unless told otherwise (``--synthetic-*``;
#: fedhar.data.synthetic.SyntheticConfig, fedhar.lodo.LodoPlan and simulations.config.FLConfig
#: take their defaults from here): the README's main job, 3 domains (so 3 clients, one per
#: domain) of 6 subjects, generator seed 0.
SYNTHETIC_DOMAINS = 3
SYNTHETIC_SUBJECTS = 6
SYNTHETIC_SEED = 0

#: --readers of every command that reads datasets (`fedhar fl`, `lodo`, `evaluate`)
READERS_HELP = ("datasets from outside fedhar, registered in every process of the run: a folder with a manifest.csv "
                "(path, or name=path), module:Class (a Reader), module:function (registers them) or module, "
                "comma-separated (README: Bring your own dataset)")

DEVICE_HELP = "where to train: cpu or cuda[:N]"


def check_device(device: str, option: str = "--device") -> str:
    """device if this machine has it ("cpu", or "cuda[:N]" with a CUDA GPU), else a FedharError."""
    if device == "cpu":
        return device
    import torch  # only for a non-default device: option checks stay quick

    if not re.fullmatch(r"cuda(:\d+)?", device) or not torch.cuda.is_available():
        raise FedharError(f"{option} {device}: only cpu or cuda[:N] on a machine with a CUDA GPU "
                          f"(this one has {'one' if torch.cuda.is_available() else 'none'})")
    return device


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or ''."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(what: str, name: str, known: Iterable[str]) -> str:
    known = list(known)
    return f"unknown {what} {name!r}{did_you_mean(name, known)}; known: {', '.join(map(str, known))}"


def check_name(what: str, name: str, known: Iterable[str]) -> str:
    """name if it is known, else a FedharError with a did-you-mean."""
    known = list(known)
    if name not in known:
        raise FedharError(unknown_name(what, name, known))
    return name


def split_names(text: str) -> list[str]:
    """'a,b' -> ['a', 'b']. '+' is read as ',' too: the separator of configurations written
    before the command line settled on commas."""
    return [part.strip() for part in re.split(r"[,+]", text or "") if part.strip()]


def choice(what: str, known: Iterable[str] | Callable[[], Iterable[str]]):
    """An argparse type accepting one known name (did-you-mean otherwise)."""
    def parse(text: str) -> str:
        names = list(known() if callable(known) else known)
        if text not in names:
            raise argparse.ArgumentTypeError(unknown_name(what, text, names))
        return text
    parse.__name__ = what  # argparse names the type in its own messages
    return parse


def name_list(what: str, known: Iterable[str] | Callable[[], Iterable[str]] | None = None, as_text: bool = False,
              plus: bool = True):
    """An argparse type for comma-separated names, each checked against known (if given).
    as_text: give back the normalised 'a,b' string (what FLConfig stores) instead of a tuple;
    plus=False: '+' belongs to names (e.g. the backbone kind 'other+synthetic')."""
    def parse(text: str):
        names = split_names(text) if plus else [n.strip() for n in text.split(",") if n.strip()]
        if known is not None:
            valid = list(known() if callable(known) else known)
            for name in names:
                if name not in valid:
                    raise argparse.ArgumentTypeError(unknown_name(what, name, valid))
        return ",".join(names) if as_text else tuple(names)
    parse.__name__ = f"{what} list"
    return parse


def number_list(kind: type):
    """An argparse type for comma-separated numbers: '0,1,2' -> (0, 1, 2)."""
    def parse(text: str):
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None
    parse.__name__ = f"{kind.__name__} list"
    return parse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown once and only when there is one; descriptions with line breaks kept as
    written, others wrapped."""

    def _format_action(self, action):
        if callable(action.help):  # computed only when help is shown (--strategy's imports every rule)
            action = copy.copy(action)
            action.help = action.help()
        return super()._format_action(action)

    def _get_help_string(self, action):
        help_text = action.help or ""
        default = action.default
        empty = default is None or default is False or (isinstance(default, (str, tuple, list)) and not default)
        if "default" in help_text or action.required or empty or default is argparse.SUPPRESS \
                or not action.option_strings:
            return help_text
        if isinstance(default, (tuple, list)):
            default = ",".join(map(str, default))
        shown = str(default).replace("%", "%%")
        return f"{help_text} (default: {shown})"

    def _split_lines(self, text, width):  # an option's help written as lines (a table) keeps them
        if "\n" in text:
            return text.splitlines()
        return super()._split_lines(text, width)

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


_INVALID_CHOICE = re.compile(r"invalid choice: '?([^' ]+)'? \(choose from (.*)\)")


class Parser(argparse.ArgumentParser):
    """argparse with fedhar's error form: one line `fedhar: error: ...`, exit 2, and a
    did-you-mean for a mistyped sub-command or choice."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        self._seen = list(sys.argv[1:] if args is None else args)  # to explain a "required" error
        return super().parse_known_args(args, namespace)

    def unknown_option(self, tokens: Iterable[str]) -> str:
        """'unrecognized arguments: --x (did you mean '--y'?)' for the first token that is no
        option (nor an abbreviation of one) of this parser, or ''."""
        known = [o for action in self._actions for o in action.option_strings]
        for token in tokens:
            flag = token.split("=")[0]
            if flag.startswith("--") and not any(o.startswith(flag) for o in known):
                return f"unrecognized arguments: {token}{did_you_mean(flag, known)}"
        return ""

    def error(self, message: str):
        if "arguments are required" in message:  # often the real mistake is a misspelt option
            message = self.unknown_option(getattr(self, "_seen", [])) or message
        match = _INVALID_CHOICE.search(message)
        if match:
            known = [k.strip(" '") for k in match.group(2).split(",")]
            message = message[: match.start()] + unknown_name("name", match.group(1), known).replace(
                "unknown name", "unknown choice")
        hint = f" (see `{self.prog} --help`)" if "--help" not in message else ""
        print(f"fedhar: error: {self.prog}: {message}{hint}", file=sys.stderr)
        raise SystemExit(2)
