"""Rewriting checked on-demand code (sandbox.py) so that it runs within bounds.

- annotations are dropped (they would be evaluated when the ``def`` runs);
- a budget step (``guards.StepBudget.step``) opens the function, every loop body and every
  comprehension item (as one more condition), so any loop or recursion spends steps;
- the operators that can build a huge object in one go (``**``, ``*``, ``<<``, ``+``,
  ``%``, and their augmented forms) call the guards instead, unless an operand makes
  them harmless (``x + 1``, ``x * 0.5``);
- f-strings format scalars only, and their result is checked for size.

The guards are reached by names starting with ``_lathe_``, which the code cannot write.
"""

from __future__ import annotations

import ast

GUARDED = {
    ast.Pow: "pow",
    ast.Mult: "mul",
    ast.LShift: "lshift",
    ast.Add: "add",
    ast.Mod: "mod",
}
"""Operators that go through ``guards`` (as ``_lathe_<name>``, ``_lathe_i<name>`` in place)."""


def bounded(tree: ast.Module) -> ast.Module:
    """``tree`` (checked by sandbox.py) rewritten as above, ready to compile."""
    return ast.fix_missing_locations(_Rewriter().visit(tree))


def _call(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=list(args), keywords=[])


def _step() -> ast.stmt:
    return ast.Expr(value=_call("_lathe_step"))


def _skips_guard(node: ast.BinOp) -> bool:
    """Operands that make the operator harmless: a number added (``x + 1``), a float
    multiplied (``x * 0.5``); a sequence cannot grow by either."""
    numbers = [
        side.value
        for side in (node.left, node.right)
        if isinstance(side, ast.Constant) and type(side.value) in (int, float)
    ]
    if isinstance(node.op, ast.Add):
        return bool(numbers)
    if isinstance(node.op, ast.Mult):
        return any(type(n) is float for n in numbers)
    return False


class _Rewriter(ast.NodeTransformer):
    """Adds budget steps and guards to a checked tree (see the module docstring)."""

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        for arg in node.args.args:
            arg.annotation = None
        node.returns = None
        self.generic_visit(node)
        node.body.insert(0, _step())
        return node

    def visit_For(self, node: ast.For) -> ast.For:
        self.generic_visit(node)
        node.body.insert(0, _step())
        return node

    def visit_While(self, node: ast.While) -> ast.While:
        self.generic_visit(node)
        node.body.insert(0, _step())
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.comprehension:
        self.generic_visit(node)
        node.ifs.append(_call("_lathe_step"))
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        self.generic_visit(node)
        name = GUARDED.get(type(node.op))
        if name is None or _skips_guard(node):
            return node
        return ast.copy_location(_call(f"_lathe_{name}", node.left, node.right), node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.stmt:
        self.generic_visit(node)
        name = GUARDED.get(type(node.op))
        probe = ast.BinOp(left=node.target, op=node.op, right=node.value)
        if name is None or _skips_guard(probe):
            return node
        current = _as_load(node.target)
        call = _call(f"_lathe_i{name}", current, node.value)
        return ast.copy_location(ast.Assign(targets=[node.target], value=call), node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.expr:
        for part in node.values:
            if isinstance(part, ast.FormattedValue):
                part.value = _call("_lathe_scalar", self.visit(part.value))
        return ast.copy_location(_call("_lathe_sized", node), node)


def _as_load(target: ast.expr) -> ast.expr:
    """A copy of an assignment target that reads it."""
    copy = ast.parse(ast.unparse(target), mode="eval").body
    return ast.copy_location(copy, target)
