"""Argo's three small languages, as the local executor needs them.

- ``{{tag}}`` substitution: Argo replaces each ``{{name}}`` (whitespace trimmed) by the value of
  ``name`` in the current scope, a flat map of dotted names to strings; ``{{=expr}}`` tags are
  expressions (util/template/template.go, simple_template.go). A tag that is not in scope is left
  as written when the scope is not complete yet (``allowUnresolved``), as Argo does between its
  passes over a template.
- ``when``: evaluated after substitution with govaluate, where a bare word is a *string*, so that
  ``heads == heads`` is true (workflow/controller/steps.go, shouldExecute).
- ``depends``: task results joined with ``&&``, ``||``, ``!`` and parentheses; a bare task name
  means ``(A.Succeeded || A.Skipped || A.Daemoned)`` (docs/enhanced-depends-logic.md).

``{{=expr}}`` implements a sprig-free subset of Argo's expr-lang: literals, variables
(``inputs.parameters.x``, ``tasks['t'].outputs.result``), comparisons, ``&&``/``||``/``!``
(and ``and``/``or``/``not``), ``? :``, and the ``asInt``/``asFloat``/``string`` functions Argo
adds. Anything else fails to parse, and the loader reports it with the field that holds it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

Scope = Mapping[str, str]

# fasttemplate takes everything from "{{" to the next "}}" as the tag.
_TAG = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


class ExpressionError(ValueError):
    """A condition or expression that cannot be parsed or evaluated."""


class Unresolved(ExpressionError):
    """A variable that is not (yet) in scope."""

    def __init__(self, name: str):
        super().__init__(f"failed to resolve {{{{{name}}}}}")
        self.name = name


# -- {{tag}} substitution ---------------------------------------------------------------------

def tags(text: str) -> list[str]:
    """The tags in ``text``, whitespace trimmed, expression tags with their leading ``=``."""
    return [match.group(1).strip() for match in _TAG.finditer(text)]


def substitute(text: str, scope: Scope, *, allow_unresolved: bool = True) -> str:
    """Replace each tag found in ``scope``; others stay as written, or raise Unresolved."""

    def replace(match: re.Match) -> str:
        tag = match.group(1).strip()
        try:
            if tag.startswith("="):
                return render_value(evaluate(tag[1:], scope))
            if tag in scope:
                return scope[tag]
            raise Unresolved(tag)
        except Unresolved:
            if allow_unresolved:
                return match.group(0)
            raise

    return _TAG.sub(replace, text)


def substitute_all(value: Any, scope: Scope, *, allow_unresolved: bool = True) -> Any:
    """substitute() applied to every string inside nested dicts and lists."""
    if isinstance(value, str):
        return substitute(value, scope, allow_unresolved=allow_unresolved)
    if isinstance(value, dict):
        return {k: substitute_all(v, scope, allow_unresolved=allow_unresolved) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_all(v, scope, allow_unresolved=allow_unresolved) for v in value]
    return value


def argo_string(value: Any) -> str:
    """A value as the string Argo makes of it: a YAML scalar (AnyString), an item, an expression's result.

    One rule for all three, Go's: booleans in lower case, whole floats without ".0", maps and
    lists as compact JSON.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return to_json(value)
    return value if isinstance(value, str) else str(value)


# encoding/json escapes these even inside strings (HTMLEscape, and two JavaScript line breaks).
_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                             "\u2028": "\\u2028", "\u2029": "\\u2029"})


def to_json(value: Any) -> str:
    """JSON as Go's json.Marshal writes it: no spaces, non-ASCII kept, <>& escaped."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).translate(_GO_ESCAPES)


def render_value(value: Any) -> str:
    """An expression's result in a string; nil is an error there, as in expr-lang."""
    if value is None:
        raise ExpressionError("expression evaluated to nil")
    return argo_string(value)


# -- tokens -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Token:
    kind: str  # "num", "str", "name", "op", "end"
    text: str
    value: Any = None


_OPERATORS = ("==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", "?", ":", "[", "]", "-", ".")
_NUMBER = re.compile(r"\d+(\.\d+)?")


def _tokenize(text: str, name_chars: str) -> list[Token]:
    out: list[Token] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "'\"":
            end, value = _read_string(text, i)
            out.append(Token("str", text[i:end], value))
            i = end
        elif c.isdigit():
            match = _NUMBER.match(text, i)
            assert match
            number = match.group(0)
            out.append(Token("num", number, float(number) if "." in number else int(number)))
            i = match.end()
        elif c.isalpha() or c == "_":
            j = i
            while j < len(text) and (text[j].isalnum() or text[j] in name_chars):
                j += 1
            out.append(Token("name", text[i:j]))
            i = j
        else:
            op = next((op for op in _OPERATORS if text.startswith(op, i)), None)
            if op is None:
                raise ExpressionError(f"unexpected {c!r} at position {i} in {text!r}")
            out.append(Token("op", op))
            i += len(op)
    out.append(Token("end", ""))
    return out


def _read_string(text: str, start: int) -> tuple[int, str]:
    quote, i, chars = text[start], start + 1, []
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            chars.append({"n": "\n", "t": "\t"}.get(text[i + 1], text[i + 1]))
            i += 2
        elif c == quote:
            return i + 1, "".join(chars)
        else:
            chars.append(c)
            i += 1
    raise ExpressionError(f"unterminated string in {text!r}")


# -- parser -----------------------------------------------------------------------------------
# An expression compiles to a function of a resolver (dotted name -> value). The dialects differ
# only in what a bare name means: a string in `when` (govaluate), a variable in `{{=expr}}`, a
# task's result in `depends`.

Resolver = Callable[[str], Any]
Compiled = Callable[[Resolver], Any]

_FUNCTIONS: dict[str, Callable[[Any], Any]] = {
    "asInt": lambda v: int(str(v).strip()),
    "asFloat": lambda v: float(str(v).strip()),
    "string": lambda v: render_value(v),
}
_KEYWORDS = {"and": "&&", "or": "||", "not": "!"}
_LEVELS = (("||",), ("&&",), ("==", "!=", "<", ">", "<=", ">="))


class _Parser:
    def __init__(self, text: str, *, names_are_strings: bool = False, tokens: list[Token] | None = None,
                 names: Callable[[str], Compiled] | None = None, what: str = ""):
        # govaluate names may contain dots; in expr-lang a dot is member access.
        self.tokens = tokens if tokens is not None else _tokenize(text, "_." if names_are_strings else "_")
        self.names_are_strings = names_are_strings
        self.names = names  # compiles every name itself (depends): no keywords, literals or functions
        self.text = text
        self.where = f"{what} {text!r}" if what else repr(text)
        self.pos = 0
        self.variables: list[str] = []

    def parse(self) -> Compiled:
        node = self.ternary()
        if self.peek().kind != "end":
            raise ExpressionError(f"unexpected {self.peek().text!r} in {self.where}")
        return node

    def ternary(self) -> Compiled:
        cond = self.binary(0)
        if not self.accept("?"):
            return cond
        yes = self.ternary()
        self.expect(":")
        no = self.ternary()
        return lambda r: yes(r) if _boolean(cond(r)) else no(r)

    def binary(self, level: int) -> Compiled:
        if level == len(_LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while (op := self.operator(_LEVELS[level])) is not None:
            left = _binary(op, left, self.binary(level + 1))
        return left

    def unary(self) -> Compiled:
        if self.operator(("!",)):
            operand = self.unary()
            return lambda r: not _boolean(operand(r))
        if self.operator(("-",)):
            operand = self.unary()
            return lambda r: -_number(operand(r))
        return self.primary()

    def primary(self) -> Compiled:
        tok = self.next()
        if tok.kind in ("num", "str"):
            return lambda r, v=tok.value: v
        if tok.kind == "op" and tok.text == "(":
            inner = self.ternary()
            self.expect(")")
            return inner
        if tok.kind == "name":
            return self.name(tok.text)
        raise ExpressionError(f"unexpected {tok.text or 'end'!r} in {self.where}")

    def name(self, word: str) -> Compiled:
        if self.names is not None:
            return self.names(word)
        if word in ("true", "false"):
            return lambda r, v=(word == "true"): v
        if self.names_are_strings:
            return lambda r, v=word: v
        if word == "nil":
            return lambda r: None
        if word in _FUNCTIONS and self.accept("("):
            arg = self.ternary()
            self.expect(")")
            return lambda r, f=_FUNCTIONS[word]: _call(f, word, arg(r))
        path = self.member_path(word)
        self.variables.append(path)
        return lambda r: r(path)

    def member_path(self, word: str) -> str:
        parts = [word]
        while True:
            if self.accept("."):
                tok = self.next()
                if tok.kind != "name":
                    raise ExpressionError(f"expected a name after '.' in {self.where}")
                parts.append(tok.text)
            elif self.accept("["):
                tok = self.next()
                if tok.kind != "str":
                    raise ExpressionError(f"only ['name'] indexing is supported in {self.where}")
                self.expect("]")
                parts.append(tok.value)
            else:
                return ".".join(parts)

    def peek(self) -> Token:
        return self.tokens[self.pos]

    def next(self) -> Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def accept(self, op: str) -> bool:
        if self.peek().kind == "op" and self.peek().text == op:
            self.pos += 1
            return True
        return False

    def expect(self, op: str) -> None:
        if not self.accept(op):
            raise ExpressionError(f"expected {op!r} in {self.where}")

    def operator(self, ops: tuple[str, ...]) -> str | None:
        tok = self.peek()
        text = tok.text
        if tok.kind == "name" and not self.names_are_strings and self.names is None:
            text = _KEYWORDS.get(tok.text, "")
        elif tok.kind != "op":
            return None
        if text in ops:
            self.pos += 1
            return text
        return None


def _binary(op: str, left: Compiled, right: Compiled) -> Compiled:
    if op == "&&":
        return lambda r: _boolean(left(r)) and _boolean(right(r))
    if op == "||":
        return lambda r: _boolean(left(r)) or _boolean(right(r))
    return lambda r: _compare(op, left(r), right(r))


def _compare(op: str, a: Any, b: Any) -> bool:
    numbers = _is_number(a) and _is_number(b)
    if op == "==":
        return a == b if numbers or type(a) is type(b) else False
    if op == "!=":
        return not _compare("==", a, b)
    if not numbers and not (isinstance(a, str) and isinstance(b, str)):
        raise ExpressionError(f"cannot compare {a!r} {op} {b!r}")
    return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(v: Any) -> float:
    if not _is_number(v):
        raise ExpressionError(f"{v!r} is not a number")
    return v


def _boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ExpressionError(f"{v!r} is not a boolean")
    return v


def _call(func: Callable[[Any], Any], name: str, arg: Any) -> Any:
    try:
        return func(arg)
    except (TypeError, ValueError) as err:
        raise ExpressionError(f"{name}({arg!r}): {err}") from None


# -- {{=expr}} --------------------------------------------------------------------------------

def expression_variables(text: str) -> list[str]:
    """The dotted variable names an expression reads; raises ExpressionError if it won't parse."""
    parser = _Parser(text, names_are_strings=False)
    parser.parse()
    return parser.variables


def evaluate(text: str, scope: Scope) -> Any:
    """Evaluate a ``{{=expr}}`` body; a variable missing from scope raises Unresolved."""

    def resolve(name: str) -> Any:
        if name in scope:
            return scope[name]
        raise Unresolved(f"={text}")

    return _Parser(text, names_are_strings=False).parse()(resolve)


# -- when -------------------------------------------------------------------------------------

def check_when(text: str) -> None:
    """Raise ExpressionError if a when condition cannot parse once its tags are substituted."""
    _Parser(_TAG.sub("x", text), names_are_strings=True).parse()


def evaluate_when(text: str) -> bool:
    """Evaluate a substituted ``when`` the way Argo does (govaluate, bare words are strings)."""
    if not text.strip():
        return True
    try:
        value = _Parser(text, names_are_strings=True).parse()(lambda name: name)
    except ExpressionError as err:
        raise ExpressionError(
            f"invalid 'when' expression {text!r}: {err} (hint: try wrapping the affected expression in quotes)"
        ) from None
    if not isinstance(value, bool):
        raise ExpressionError(f"'when' expression {text!r} did not evaluate to a boolean")
    return value


# -- depends ----------------------------------------------------------------------------------

TASK_RESULTS = ("Succeeded", "Failed", "Errored", "Skipped", "Omitted", "Daemoned", "AnySucceeded", "AllFailed")
_DEPENDS_TOKEN = re.compile(r"\s*(?:(&&|\|\||!|\(|\))|([A-Za-z0-9_][-A-Za-z0-9_]*)(?:\.([A-Za-z]+))?)")


@dataclass(frozen=True)
class Depends:
    """A parsed ``depends``: the tasks it names and a predicate over their results."""

    tasks: tuple[str, ...]
    predicate: Callable[[Mapping[str, frozenset[str]]], bool]


def parse_depends(text: str, bare_results: Callable[[str], Iterable[str]] = lambda _t: ()) -> Depends:
    """Parse ``depends``; ``bare_results(task)`` adds results a bare name also accepts (continueOn).

    The predicate takes, per task, the set of result names that are true for it.
    """
    if not text.strip():
        return Depends((), lambda _results: True)
    names: list[str] = []

    def task_result(word: str) -> Compiled:
        task, _, result = word.partition(".")
        if result and result not in TASK_RESULTS:
            raise ExpressionError(
                f"unknown task result {task}.{result} in depends {text!r} (Argo knows {', '.join(TASK_RESULTS)})"
            )
        names.append(task)
        accepted = {result} if result else {"Succeeded", "Skipped", "Daemoned", *bare_results(task)}
        return lambda r: bool(r(task) & accepted)

    compiled = _Parser(text, tokens=_depends_tokens(text), names=task_result, what="depends").parse()
    return Depends(tuple(dict.fromkeys(names)),
                   lambda results: compiled(lambda task: results.get(task, frozenset())))


def depends_text(task: Mapping[str, Any]) -> str:
    """A task's `depends`, or its older `dependencies` list as the `depends` that means the same."""
    if "depends" in task:
        return str(task["depends"])
    return " && ".join(str(d) for d in task.get("dependencies") or [])


def _depends_tokens(text: str) -> list[Token]:
    """Task names may hold '-', which the expression tokenizer reads as minus."""
    out, i = [], 0
    while i < len(text.rstrip()):
        match = _DEPENDS_TOKEN.match(text, i)
        if not match or match.end() == i:
            raise ExpressionError(f"unexpected {text[i:].strip()[:1]!r} in depends {text!r}")
        op, task, result = match.groups()
        out.append(Token("op", op) if op else Token("name", f"{task}.{result}" if result else task))
        i = match.end()
    return out + [Token("end", "")]
