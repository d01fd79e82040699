"""The Python in the README and the docs runs as written when saved to a file."""

import re

import pytest

from tests.support import ROOT

DOCS = ["README.md", "docs/client.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def python_blocks():
    for name in DOCS:
        for number, block in enumerate(BLOCK.findall((ROOT / name).read_text()), 1):
            yield pytest.param(block, id=f"{name}#{number}")


@pytest.mark.parametrize("source", list(python_blocks()))
def test_compiles_as_a_module(source):
    # A module cannot hold a top-level await: compile() refuses it as Python does.
    compile(source, "example.py", "exec")
