"""The config key tables, rendered from the declarations in fedln_jax/config_keys.py: the one of
`run --help` / `sweep --help` / `config --help`, and docs/config.md's, which
`python -m fedln_jax.config_help docs/config.md` rewrites in place (tests/test_config_help.py
checks that the committed page holds what it would write). Free of JAX, as config_keys."""
from __future__ import annotations

import sys

from fedln_jax.config_keys import (allowed_text, config_keys, default_text, defaults, spec,
                                   type_text)

DOCS_BEGIN = ("<!-- config keys: generated from fedln_jax/config_keys.py by "
              "`python -m fedln_jax.config_help docs/config.md`; edit the declarations, "
              "not this table -->")
DOCS_END = "<!-- end of config keys -->"


def key_rows() -> list[tuple[str, str, str, str, str]]:
    """(key, type, default, allowed values, help) of every config key, in declaration order."""
    values = defaults()
    return [(name, type_text(name), default_text(values[name]), allowed_text(name),
             spec(name).help) for name in config_keys()]


def keys_help() -> str:
    """The config key table of `fedln-jax run --help`, `sweep --help` and `config --help`."""
    rows = key_rows()
    width = max(len(k) for k, *_ in rows)
    types = max(len(t) for _, t, *_ in rows)
    defaults_ = max(len(d) for _, _, d, *_ in rows)
    lines = ["config keys (KEY=VALUE; key, type, default, meaning; allowed values; "
             "docs/config.md):"]
    lines += [f"  {k:<{width}}  {t:<{types}}  {d:<{defaults_}}  {h}"
              + (f"; allowed: {a}" if a else "") for k, t, d, a, h in rows]
    return "\n".join(lines)


def docs_table() -> str:
    """docs/config.md's key table, between its markers."""
    lines = [DOCS_BEGIN, "", "| key | type | default | allowed | meaning |",
             "|-----|------|---------|---------|---------|"]
    for name, type_, default, allowed, help_ in key_rows():
        note = spec(name).note
        meaning = help_ + (f"; {note}" if note else "")
        lines.append(f"| `{name}` | {_cell(type_)} | `{default}` | {_cell(allowed)} "
                     f"| {_cell(meaning)} |")
    return "\n".join(lines + ["", DOCS_END])


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (a `|` would end the cell)."""
    return text.replace("|", "\\|")


def with_docs_table(page: str) -> str:
    """The page with the text between its markers (themselves included) replaced by docs_table();
    ValueError when the page lacks them."""
    begin, end = page.find(DOCS_BEGIN), page.find(DOCS_END)
    if begin < 0 or end < begin:
        raise ValueError(f"the page has no `{DOCS_BEGIN}` ... `{DOCS_END}` section")
    return page[:begin] + docs_table() + page[end + len(DOCS_END):]


def main(argv: list[str]) -> int:
    """No argument: print the key table. A path: rewrite that page's key table in place."""
    if not argv:
        print(keys_help())
        return 0
    with open(argv[0], encoding="utf-8") as f:
        page = with_docs_table(f.read())   # before the page is opened for writing
    with open(argv[0], "w", encoding="utf-8") as f:
        f.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
