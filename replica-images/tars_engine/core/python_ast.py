"""`ast.parse` behind one lock, for code that parses from several threads at once.

CPython 3.11 tracks the AST validator's recursion depth per interpreter, not per thread:
two parses at the same moment can fail with "SystemError: AST constructor recursion
depth mismatch". The workflow analyzes and generates on worker threads, so every parse
in the engine goes through here.
"""

from __future__ import annotations

import ast
import threading

_PARSING = threading.Lock()


def parse(content: str) -> ast.Module:
    with _PARSING:
        return ast.parse(content)
