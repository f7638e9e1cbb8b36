"""The YAML reader of config files and `--set` values: PyYAML's safe loader with decimal numbers
only and no duplicate keys.

PyYAML follows YAML 1.1, where `042` is octal (34), `1:30` is base 60 (90), `0x40` is 64 and
`1_000` is 1000, and where a key given twice keeps its last value without a word. A seed typed as
`042` would train seed 34, and a second `optim:` section would drop the first one's settings.
Here a number is written in decimal (`42`, `-3`, `0.5`, `1.0e-05`, `.inf`); anything else stays
text, which a numeric key then refuses and a text key keeps as typed, and a repeated key is an
error. What reads as a number here also does in YAML 1.1, so PyYAML's dumper (`save_yaml`) quotes
every text that would read as one, and saved configs read back as they were written. (`1e-4`,
text in YAML 1.1, stays text here too; a number key converts it.)
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """SafeLoader with decimal numbers only (see above) and a duplicate-key check."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class says so
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (a key may be given once)",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# Each a subset of YAML 1.1's pattern for the type (see the module docstring)
_Loader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:0|[1-9][0-9]*)\.[0-9]*(?:[eE][-+][0-9]+)?"
        r"|\.[0-9]+(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


class _TextLoader(_Loader):
    """The same, reading every plain scalar but true/false/null as text (values of text keys)."""


_TextLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}


def load_text(text: str, numbers: bool = True) -> Any:
    """Parse YAML text (a config file, or one `--set` value) as described above; `numbers`
    False keeps numbers as written (`1.50` stays "1.50")."""
    return yaml.load(text, Loader=_Loader if numbers else _TextLoader)  # noqa: S506 (safe)
