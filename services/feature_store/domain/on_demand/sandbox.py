"""Checking on-demand code before it is compiled, and rewriting it to run within bounds.

An on-demand view ships the source of one function. Restricted builtins alone are not a
boundary: ``().__class__.__base__.__subclasses__()`` reaches every class in the process
from any literal. So the source is parsed and held to a small language before anything
of it runs (``checked_tree``), and refused at ApplyDefinitions naming the construct:

- one module-level function of one argument (no decorators, defaults or other code);
- statements: assignments, ``if``, ``for``, ``while``, ``return``, ``raise``, ``assert``,
  ``del``, ``pass``, ``break``, ``continue``, and ``try``/``except`` naming one of the
  given exceptions (no bare ``except``, no ``finally``, no ``with``);
- no ``import``, ``global``, ``nonlocal``, ``lambda``, nested ``def`` or ``class``,
  ``yield``, ``await``, ``match``;
- no name starting with ``_``; names must be the argument, the function's own locals,
  ``math``, or a builtin of ``guards.BUILTINS`` (so no ``getattr``, ``type``, ``eval``...);
- attributes only from ``ALLOWED_ATTRIBUTES`` (methods of text, numbers, containers and
  datetimes, and ``math``'s functions), read, never assigned: no ``__class__``, no
  ``gi_frame``/``f_globals``, no ``format``/``format_map`` (whose templates reach
  attributes), no ``join``/``replace``/``ljust``... (whose output can be far larger than
  their input);
- f-string format specs constant and small; no ``%`` on a text literal;
- at most ``MAX_SOURCE_CHARS`` characters and ``MAX_NODES`` syntax nodes, and constant
  expressions within the guards' limits (``10**10**10`` is refused here).

The checked tree is then rewritten to run within bounds (``rewrite.py``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from libs.errors import InvalidArgument
from services.feature_store.domain.on_demand import guards, rewrite

MAX_SOURCE_CHARS = 16_384
MAX_NODES = 4_000

ALLOWED_ATTRIBUTES = guards.names(
    # text
    "capitalize casefold count endswith find index isalnum isalpha isascii isdecimal isdigit",
    "islower isnumeric isspace istitle isupper lower lstrip partition removeprefix",
    "removesuffix rfind rindex rpartition rsplit rstrip split splitlines startswith strip",
    "swapcase title upper",
    # containers
    "add append clear copy difference discard get insert intersection isdisjoint issubset",
    "issuperset items keys pop remove reverse setdefault sort symmetric_difference union",
    "update values",
    # numbers, datetimes and durations
    "bit_length is_integer date day days hour isocalendar isoformat isoweekday microsecond",
    "microseconds minute month second seconds timestamp total_seconds weekday year",
    *guards.MATH_NAMES,
)
"""Every attribute on-demand code may read, whatever the object."""

_ALLOWED = tuple(
    getattr(ast, name)
    for name in guards.names(
        # statements
        "Assign AugAssign Return If For While Break Continue Pass Expr Raise Assert Delete Try",
        # expressions
        "BoolOp NamedExpr BinOp UnaryOp IfExp Dict Set ListComp SetComp DictComp GeneratorExp",
        "Compare Call FormattedValue JoinedStr Constant Attribute Subscript Starred Name List",
        "Tuple Slice",
        # their parts
        "ExceptHandler comprehension keyword expr_context boolop unaryop cmpop",
        # binary operators (no @)
        "Add Sub Mult Div FloorDiv Mod Pow LShift RShift BitOr BitXor BitAnd",
    )
)
"""The syntax on-demand code may use (every node of the function's body is one of these)."""

_SAFE_SPEC = re.compile(r"(.?[<>=^])?[+\- ]?z?#?0?\d{0,3}[,_]?(\.\d{0,3})?[bcdeEfFgGnosxX%]?")
"""Format specs with a width and precision of at most three digits."""

_UNSUPPORTED = {
    ast.Import: "import",
    ast.ImportFrom: "import",
    ast.Global: "global",
    ast.Nonlocal: "nonlocal",
    ast.Lambda: "lambda",
    ast.FunctionDef: "a nested def",
    ast.AsyncFunctionDef: "async def",
    ast.ClassDef: "class",
    ast.Yield: "yield",
    ast.YieldFrom: "yield from",
    ast.Await: "await",
    ast.With: "with",
    ast.AsyncWith: "async with",
    ast.AsyncFor: "async for",
    ast.Match: "match",
    ast.AnnAssign: "an annotated assignment",
    ast.MatMult: "@",
}


_RESERVED = "names starting with '_' are reserved"


class _Refused(Exception):
    """``what`` (a construct, at ``node``'s line) is not allowed, because ``why``."""

    def __init__(self, node: ast.AST | None, what: str, why: str = "") -> None:
        line = getattr(node, "lineno", None)
        at = f" (line {line})" if line else ""
        super().__init__(f"{what}{at} is not allowed in on-demand code{': ' if why else ''}{why}")


def checked_tree(source: str, function_name: str, where: str) -> ast.Module:
    """The source's syntax tree, checked and rewritten; InvalidArgument naming ``where``
    and the offending construct otherwise."""
    if len(source) > MAX_SOURCE_CHARS:
        raise InvalidArgument(
            f"{where}: source_code is {len(source):,} characters; at most {MAX_SOURCE_CHARS:,}"
        )
    try:
        tree = ast.parse(source, filename=f"<{where}>", mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise InvalidArgument(f"{where}: source_code does not load: {exc}") from exc
    try:
        nodes = sum(1 for _ in ast.walk(tree))
        if nodes > MAX_NODES:
            raise _Refused(None, f"source of {nodes:,} syntax nodes", f"at most {MAX_NODES:,}")
        function = _the_function(tree, function_name)
        _Checker(function).check()
    except _Refused as refused:
        raise InvalidArgument(
            f"{where}: source_code does not load: {refused} "
            "(the rules: docs/adr/0016-feature-store-layers.md)"
        ) from None
    return rewrite.bounded(tree)


def _the_function(tree: ast.Module, function_name: str) -> ast.FunctionDef:
    body = list(tree.body)
    if body and _is_docstring(body[0]):
        body.pop(0)
    if len(body) != 1 or not isinstance(body[0], ast.FunctionDef):
        found = next((n for n in body if not isinstance(n, ast.FunctionDef)), body[-1:] or None)
        node = found[0] if isinstance(found, list) else found
        what = "a second function" if isinstance(node, ast.FunctionDef) else _construct(node)
        raise _Refused(node, f"{what} beside the function", "the source is one def")
    function = body[0]
    if function.name != function_name:
        raise _Refused(
            function, f"a function named {function.name!r}", f"function_name is {function_name!r}"
        )
    if function.name.startswith("_"):
        raise _Refused(
            function, f"the name {function.name!r}", "names starting with '_' are reserved"
        )
    if function.decorator_list:
        raise _Refused(function.decorator_list[0], "a decorator")
    args = function.args
    if (
        args.posonlyargs
        or args.vararg
        or args.kwonlyargs
        or args.kwarg
        or args.defaults
        or len(args.args) != 1
    ):
        raise _Refused(function, "a signature other than (row)", "the function takes one dict")
    return function


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _construct(node: ast.AST) -> str:
    return _UNSUPPORTED.get(type(node), type(node).__name__)


class _Checker:
    """Walks the function's body (annotations excluded: they are dropped, never run)."""

    def __init__(self, function: ast.FunctionDef) -> None:
        self._function = function
        self._known = {
            function.name,
            "math",
            *guards.BUILTINS,
            function.args.args[0].arg,
            *self._assigned(),
        }

    def check(self) -> None:
        self._name(self._function.args.args[0].arg, self._function)
        for statement in self._function.body:
            # In source order, innermost first: ``().__class__.__base__`` names __class__.
            for node in sorted(_walk(statement), key=_position):
                self._node(node)

    def _assigned(self) -> Iterator[str]:
        for statement in self._function.body:
            for node in _walk(statement):
                if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                    yield node.id
                elif isinstance(node, ast.ExceptHandler) and node.name:
                    yield node.name

    def _node(self, node: ast.AST) -> None:
        if not isinstance(node, _ALLOWED):
            raise _Refused(node, _construct(node))
        match node:
            case ast.Name():
                self._name(node.id, node)
                if isinstance(node.ctx, ast.Load) and node.id not in self._known:
                    raise _Refused(
                        node,
                        f"the name {node.id!r}",
                        "only the row, local names, math and a few builtins are available",
                    )
            case ast.Attribute():
                if node.attr.startswith("_"):
                    raise _Refused(
                        node, f"the attribute {node.attr!r}", "'_' attributes reach the interpreter"
                    )
                if node.attr not in ALLOWED_ATTRIBUTES:
                    raise _Refused(
                        node, f"the attribute {node.attr!r}", "it is not on the allow-list"
                    )
                if not isinstance(node.ctx, ast.Load):
                    raise _Refused(node, f"assigning or deleting the attribute {node.attr!r}")
            case ast.Try():
                if node.finalbody:
                    raise _Refused(node, "finally")
            case ast.ExceptHandler():
                self._handler(node)
            case ast.comprehension():
                if node.is_async:
                    raise _Refused(node.target, "async for")
            case ast.FormattedValue():
                self._format_spec(node)
            case ast.BinOp():
                self._binary(node)
            case ast.AugAssign():
                if type(node.op) in rewrite.GUARDED and not _plain(node.target):
                    raise _Refused(
                        node, "an augmented assignment to a computed target", "write x = x op y"
                    )

    def _name(self, name: str, node: ast.AST) -> None:
        if name.startswith("_"):
            raise _Refused(node, f"the name {name!r}", _RESERVED)

    def _handler(self, handler: ast.ExceptHandler) -> None:
        if handler.name:
            self._name(handler.name, handler)
        if handler.type is None:
            raise _Refused(handler, "a bare except", "name the exceptions")
        names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        for name in names:
            if not isinstance(name, ast.Name) or name.id not in guards.EXCEPTIONS:
                raise _Refused(
                    handler,
                    f"catching {ast.unparse(name)}",
                    f"catch only {', '.join(sorted(guards.EXCEPTIONS))}",
                )

    def _format_spec(self, node: ast.FormattedValue) -> None:
        spec = node.format_spec
        if spec is None:
            return
        parts = spec.values if isinstance(spec, ast.JoinedStr) else [spec]
        if any(not isinstance(p, ast.Constant) or not isinstance(p.value, str) for p in parts):
            raise _Refused(node, "a computed format spec")
        text = "".join(p.value for p in parts)  # type: ignore[attr-defined]
        if not _SAFE_SPEC.fullmatch(text):
            raise _Refused(node, f"the format spec {text!r}", "widths of at most three digits")

    def _binary(self, node: ast.BinOp) -> None:
        if (
            isinstance(node.op, ast.Mod)
            and isinstance(node.left, ast.Constant | ast.JoinedStr)
            and isinstance(getattr(node.left, "value", ""), str)
        ):
            raise _Refused(node, "%-formatting", "use an f-string")
        if type(node.op) in rewrite.GUARDED:
            try:
                _constant(node)
            except guards.OnDemandLimit as exc:
                raise _Refused(node, "this constant expression", f"it makes {exc}") from None
            except (ArithmeticError, TypeError, ValueError, _NotConstant):
                pass  # not a constant, or one whose error shows when it runs


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node`` (itself included) but annotations, which are dropped."""
    yield node
    for name, value in ast.iter_fields(node):
        if name in ("annotation", "returns"):
            continue
        children = value if isinstance(value, list) else [value]
        for child in children:
            if isinstance(child, ast.AST):
                yield from _walk(child)


def _position(node: ast.AST) -> tuple[int, int, int, int, int]:
    """Source order, innermost first; nodes without a place (operators, ``arguments``)
    after those with one, so the construct named is one a reader can find."""
    return (
        0 if hasattr(node, "lineno") else 1,
        getattr(node, "lineno", 0),
        getattr(node, "col_offset", 0),
        getattr(node, "end_lineno", 0),
        getattr(node, "end_col_offset", 0),
    )


def _plain(target: ast.expr) -> bool:
    """A target that is safe to evaluate twice (names, constants, subscripts of them)."""
    return all(
        isinstance(n, ast.Name | ast.Constant | ast.Subscript | ast.Attribute | ast.expr_context)
        for n in ast.walk(target)
    )


class _NotConstant(Exception):
    pass


_FOLD = {
    ast.Pow: guards.OPERATORS["_lathe_pow"],
    ast.Mult: guards.OPERATORS["_lathe_mul"],
    ast.LShift: guards.OPERATORS["_lathe_lshift"],
    ast.Add: guards.OPERATORS["_lathe_add"],
}


def _constant(node: ast.expr) -> object:
    """The value of a constant expression of literals and guarded operators, computed
    through the guards (so ``10**10**10`` is refused at apply, not when a row runs)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bytes):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_constant(node.operand)  # type: ignore[operator]
    if isinstance(node, ast.BinOp) and type(node.op) in _FOLD:
        return _FOLD[type(node.op)](_constant(node.left), _constant(node.right))
    raise _NotConstant
