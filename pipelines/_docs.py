"""``docs/options.md`` rendered from the click commands themselves, so the option tables cannot drift.

``python -m pipelines._docs`` rewrites the file; ``tests/pipelines/test_docs.py`` fails when it is stale.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from pipelines._data import data_options
from pipelines._options import common_options

OPTIONS_MD = Path(__file__).resolve().parent.parent / "docs" / "options.md"
# MLproject entry points in the order a chain runs them
ENTRY_POINTS = ("prepare", "teacher", "score", "train", "evaluate", "export", "promote", "main")
HEADER = """# Options of every entry point

Generated from the click commands by `python -m pipelines._docs` (a test fails when this file is stale):
do not edit by hand. Run an entry point as `python -m pipelines.NAME --key value` or
`mlflow run . -e NAME --env-manager local -P key=value`. Every option also answers to its underscore spelling,
and MLflow passes parameters the MLproject does not declare straight through, so every option below works as
`-P key=value` (for example `-P rank=16 -P w_mcl=0.5 -P loss_parts=sup,dist`). A bad value gets one clear
message and exit code 2. Why the defaults are what they are: [defaults.md](defaults.md).
"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _names(param: click.Option) -> str:
    """The dashed spellings (the underscore aliases are implied), with the off switch of a boolean flag."""
    names = [n for n in param.opts if "_" not in n] or list(param.opts)
    return " / ".join(f"`{n}`" for n in [*names, *param.secondary_opts])


def _default(param: click.Option) -> str:
    if param.is_flag and not param.secondary_opts:
        return "off" if not param.default else "on"
    if param.is_flag:
        return f"`{(param.opts if param.default else param.secondary_opts)[0]}`"
    if isinstance(param.show_default, str):
        return param.show_default
    if param.default is None or param.default == "":
        return ""
    return f"`{param.default}`"


def _kind(param: click.Option) -> str:
    if param.is_flag:
        return "flag"
    if isinstance(param.type, click.Choice):
        return " \\| ".join(map(str, param.type.choices))
    if isinstance(param.type, click.types._NumberRangeBase):  # "integer, x>=1" says what is accepted
        return f"{param.type.name.removesuffix(' range')}, {param.type._describe_range()}"
    return param.type.name


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and "--help" not in p.opts]


def _table(params: list[click.Option]) -> list[str]:
    return ["| option | type | default | what it does |", "|---|---|---|---|",
            *(f"| {_names(p)} | {_kind(p)} | {_default(p)} | {_cell(p.help or '')} |" for p in params)]


def _group(decorator) -> click.Command:
    return click.command()(decorator(lambda **kwargs: None))


def render_options() -> str:
    shared = {"data options": _group(data_options), "common options": _group(common_options)}
    shared_names = {title: {p.name for p in _options(cmd)} for title, cmd in shared.items()}
    lines = [HEADER]
    for name in ENTRY_POINTS:
        command = importlib.import_module(f"pipelines.{name}").cli
        params = _options(command)
        has = [title for title, names in shared_names.items() if names <= {p.name for p in params}]
        own = [p for p in params if not any(p.name in shared_names[title] for title in has)]
        doc = (command.help or "").split("\n\n")[0]
        lines += [f"## {name}", "", _cell(doc) + (f" Also takes the {' and '.join(has)}." if has else ""), "",
                  *_table(own), ""]
    for title, cmd in shared.items():
        lines += [f"## {title}", "", *_table(_options(cmd)), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    text = render_options()
    if "--check" in argv:
        stale = not OPTIONS_MD.exists() or OPTIONS_MD.read_text(encoding="utf-8") != text
        print(f"{OPTIONS_MD} is {'stale: run python -m pipelines._docs' if stale else 'up to date'}")
        return int(stale)
    OPTIONS_MD.write_text(text, encoding="utf-8")
    print(f"wrote {OPTIONS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
