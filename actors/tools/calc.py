"""A safe arithmetic evaluator for the `calculator` tool.

The expression comes from an LLM, which may have copied it from a user: it is
parsed with `ast` and only numbers, arithmetic, a few math functions and
constants are evaluated — never `eval`. Sizes are checked *before* the work
(an exponent is refused when the result would be huge), because `9**9**9` would
otherwise hold the event loop for hours.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

Number = int | float

MAX_CHARS = 500
MAX_NODES = 200
MAX_INT_BITS = 1024  # ≈ 1.8e308, about where floats give up too


class CalcError(ValueError):
    pass


def _round(x: Number, ndigits: int = 0) -> Number:
    # round() with a huge negative ndigits computes 10**-ndigits: keep it small.
    if not isinstance(ndigits, int) or abs(ndigits) > 20:
        raise CalcError("round: ndigits must be a whole number between -20 and 20")
    return round(x, ndigits)


FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log10": math.log10, "log2": math.log2,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos,
    "atan": math.atan, "atan2": math.atan2, "hypot": math.hypot, "degrees": math.degrees,
    "radians": math.radians, "floor": math.floor, "ceil": math.ceil, "abs": abs, "round": _round,
    "min": min, "max": max,
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _pow(a: Number, b: Number) -> Number:
    if isinstance(a, int) and isinstance(b, int) and b >= 0:
        if abs(a) > 1 and b * abs(a).bit_length() > MAX_INT_BITS + 64:
            raise CalcError("result too large")
        return a**b
    try:
        result = float(a) ** float(b)
    except ZeroDivisionError:
        raise CalcError("0 cannot be raised to a negative power") from None
    if isinstance(result, complex):
        raise CalcError("result is not a real number (a negative number to a fractional power)")
    return result


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Number]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: _pow,
}
_SYMBOL = {ast.BitXor: "^", ast.BitAnd: "&", ast.BitOr: "|", ast.LShift: "<<", ast.RShift: ">>",
           ast.MatMult: "@"}


def evaluate(expression: str) -> Number:
    text = expression.strip()
    if not text:
        raise CalcError("empty expression")
    if len(text) > MAX_CHARS:
        raise CalcError(f"expression too long (at most {MAX_CHARS} characters)")
    # People (and models) write 2^10 for a power; Python's ^ (xor) is not offered anyway.
    text = text.replace("^", "**")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        reason = exc.msg if isinstance(exc, SyntaxError) else "cannot parse"
        raise CalcError(f"not a valid expression: {reason}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalcError("expression too complex")
    return _eval(tree.body)


def _checked(value: Any) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalcError("the result is not a number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalcError("result too large")
    if isinstance(value, float) and math.isinf(value):
        raise CalcError("result too large")
    if isinstance(value, float) and math.isnan(value):
        raise CalcError("the result is not a number")
    return value


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalcError(f"only numbers are allowed, not {node.value!r}")
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        value = _eval(node.operand)
        return value if isinstance(node.op, ast.UAdd) else -value
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            symbol = _SYMBOL.get(type(node.op), type(node.op).__name__)
            raise CalcError(f"operator {symbol} is not supported; use + - * / // % **")
        left, right = _eval(node.left), _eval(node.right)
        return _apply(_BINARY[type(node.op)], left, right)
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise CalcError(f"unknown name {node.id!r}; constants: {', '.join(CONSTANTS)}")
    if isinstance(node, ast.Call):
        return _call(node)
    raise CalcError(f"unsupported syntax ({type(node).__name__}); "
                    "use numbers, + - * / // % **, parentheses and math functions")


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
        name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        raise CalcError(f"unknown function {name!r}; functions: {', '.join(FUNCTIONS)}")
    if node.keywords:
        raise CalcError("keyword arguments are not supported")
    name = node.func.id
    args = [_eval(a) for a in node.args]
    return _apply(FUNCTIONS[name], *args, name=name)


def _apply(fn: Callable[..., Number], *args: Number, name: str | None = None) -> Number:
    where = f"{name}: " if name else ""
    try:
        return _checked(fn(*args))
    except CalcError:
        raise
    except ZeroDivisionError:
        raise CalcError("division by zero") from None
    except OverflowError:
        raise CalcError("result too large") from None
    except ValueError as exc:
        raise CalcError(f"{where}{exc}") from None
    except TypeError:
        raise CalcError(f"{where}wrong number or kind of arguments") from None


def format_number(value: Number) -> str:
    """Short and speakable: 0.1+0.2 reads 0.3, sqrt(16) reads 4."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.12g}"
