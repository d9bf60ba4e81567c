"""`ast.parse` behind one lock, for code that parses from several threads at once.

CPython 3.11 tracks the AST validator's recursion depth per interpreter, not per thread:
two parses at the same moment can fail with "SystemError: AST constructor recursion
depth mismatch". The workflow analyzes and generates on worker threads, so every parse
in the engine goes through here.

A file may start with a UTF-8 byte order mark, which Python reads past when it loads a
file but `ast.parse` refuses in a string; it is left out of what is parsed.
"""

from __future__ import annotations

import ast
import threading

_PARSING = threading.Lock()
BYTE_ORDER_MARK = "\ufeff"


def parse(content: str) -> ast.Module:
    with _PARSING:
        return ast.parse(content.removeprefix(BYTE_ORDER_MARK))
