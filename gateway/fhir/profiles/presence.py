"""Deciding invariants from which elements are present, before evaluating them.

Most invariants of the specification are built from `name.exists()`, `name.empty()`, `name.count()` and
boolean operators over them (`code.empty() or system.exists()`, `low.exists() or high.exists()`), or start
with such a part (`value.empty() or component.code.where(...).empty()`). Whether a member is present is a
dict lookup; evaluating the whole expression, even natively, costs some microseconds, and the validator
runs them on every Quantity, reference range and resource of every write.

`compile_presence` turns the parse tree into a function of the context that returns the expression's
value when presence alone settles it (a boolean or an integer) and None otherwise, for the caller to
evaluate it in full. What it settles:

- `a.exists()`, `a.empty()`, `a.count()` on a member of the context: counted as the native evaluator
  counts (`native.member_counter`);
- any path that starts with a member that is absent, through members, `where`, `select`, `ofType`,
  `first`, `last` and `tail` (all empty on empty input): `exists()` false, `empty()` true, `count()` 0;
- `not()`, `and`, `or`, `xor`, `implies` over settled booleans (three-valued logic: an unsettled operand
  settles the result only when the other one decides it), `+` and comparisons of settled integers,
  parentheses, integer and boolean literals.

Every settled value is the one FHIRPath gives, so a settled answer can stand for the evaluation. It imports
only `native`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from gateway.fhir.profiles.native import (
    BOOLEAN_OPERATORS,
    NotNative,
    member_counter,
)

# A settled value (bool or int), or None when presence does not settle it.
Decide = Callable[[Any], Any]

# Functions that give an empty result on an empty input, so a path through them from an absent member is
# empty.
_EMPTY_ON_EMPTY: Final = frozenset({"where", "select", "ofType", "first", "last", "tail"})


def _unsettled(context: Any) -> Any:
    return None


class _Unsupported(Exception):
    """A part of the expression that presence cannot settle at all."""


class _Presence:
    def __init__(self, model: Mapping[str, Any]) -> None:
        self.model = model
        self.settles = False  # whether any part can be settled (else compiling is pointless)
        self.counts = False  # whether a settled value depends on how many items there are

    def expression(self, node: Mapping[str, Any]) -> Decide:
        """A settling function for any expression node (`_unsettled` when it cannot settle it)."""
        try:
            return self._expression(node)
        except (_Unsupported, NotNative, KeyError, IndexError, TypeError, ValueError):
            return _unsettled

    def _expression(self, node: Mapping[str, Any]) -> Decide:
        kind = node.get("type")
        if kind == "TermExpression":
            return self.term(node["children"][0])
        if kind == "InvocationExpression":
            return self.invocation(node)
        if kind in ("OrExpression", "AndExpression", "ImpliesExpression"):
            return self.logic(node["terminalNodeText"][0], *node["children"])
        if kind == "AdditiveExpression" and node["terminalNodeText"] == ["+"]:
            return self.arithmetic(*node["children"])
        if kind in ("InequalityExpression", "EqualityExpression"):
            return self.comparison(node["terminalNodeText"][0], *node["children"])
        raise _Unsupported(kind)

    def term(self, term: Mapping[str, Any]) -> Decide:
        kind = term.get("type")
        if kind == "ParenthesizedTerm":
            return self.expression(term["children"][0])
        if kind == "LiteralTerm":
            literal = term["children"][0]
            text = str(literal.get("text", ""))
            if literal.get("type") == "BooleanLiteral":
                value: Any = text == "true"
            elif literal.get("type") == "NumberLiteral" and text.isdigit():
                value = int(text)
            else:
                raise _Unsupported(literal.get("type"))
            return lambda context: value
        raise _Unsupported(kind)

    def invocation(self, node: Mapping[str, Any]) -> Decide:
        """`path.exists()`, `path.empty()`, `path.count()`, `x.not()`."""
        left, invocation = node["children"]
        if invocation.get("type") != "FunctionInvocation":
            raise _Unsupported("a member path is not a boolean")
        functn = invocation["children"][0]
        name = str(functn["children"][0].get("text", ""))
        params = list(functn["children"][1]["children"]) if len(functn["children"]) > 1 else []
        if name == "not" and not params:
            inner = self.expression(left)

            def negation(context: Any) -> Any:
                value = inner(context)
                return not value if type(value) is bool else None

            return negation
        if name not in ("exists", "empty", "count") or (params and name != "exists"):
            raise _Unsupported(name)
        first, whole = self.path(left)
        count = member_counter(first, self.model)
        self.settles = True
        if whole and not params:  # the path is one member: its count settles everything
            if name == "exists":
                return lambda context: count(context) > 0
            if name == "empty":
                return lambda context: count(context) == 0
            self.counts = True
            return count
        absent: Any = {"exists": False, "empty": True, "count": 0}[name]
        return lambda context: absent if count(context) == 0 else None

    def path(self, node: Mapping[str, Any]) -> tuple[str, bool]:
        """(first member, whether the path is that member alone) of a path starting at the focus whose
        every later step is empty on empty input."""
        kind = node.get("type")
        if kind == "TermExpression":
            term = node["children"][0]
            if term.get("type") != "InvocationTerm":
                raise _Unsupported("not a path")
            member = term["children"][0]
            if member.get("type") != "MemberInvocation":
                raise _Unsupported("not a member")
            return str(member["children"][0].get("text", "")), True
        if kind != "InvocationExpression":
            raise _Unsupported("not a path")
        left, step = node["children"]
        if step.get("type") == "FunctionInvocation":
            name = str(step["children"][0]["children"][0].get("text", ""))
            if name not in _EMPTY_ON_EMPTY:
                raise _Unsupported(name)
        elif step.get("type") != "MemberInvocation":
            raise _Unsupported("not a path step")
        return self.path(left)[0], False

    def logic(self, operator: str, left_node: Mapping[str, Any], right_node: Mapping[str, Any]) -> Decide:
        left, right = self.expression(left_node), self.expression(right_node)
        rule = _RULES.get(operator)
        if rule is None:
            raise _Unsupported(operator)

        def combined(context: Any) -> Any:
            a = left(context)
            a = a if type(a) is bool else None
            b = right(context)
            return rule(a, b if type(b) is bool else None)

        return combined

    def arithmetic(self, left_node: Mapping[str, Any], right_node: Mapping[str, Any]) -> Decide:
        left, right = self.expression(left_node), self.expression(right_node)

        def total(context: Any) -> Any:
            a, b = left(context), right(context)
            return a + b if type(a) is int and type(b) is int else None

        return total

    def comparison(
        self, operator: str, left_node: Mapping[str, Any], right_node: Mapping[str, Any]
    ) -> Decide:
        compare = _COMPARE.get(operator)
        if compare is None:
            raise _Unsupported(operator)
        left, right = self.expression(left_node), self.expression(right_node)

        def compared(context: Any) -> Any:
            a, b = left(context), right(context)
            return compare(a, b) if type(a) is int and type(b) is int else None

        return compared


_RULES: Final = BOOLEAN_OPERATORS
_COMPARE: Final[dict[str, Callable[[int, int], bool]]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def compile_presence(tree: Mapping[str, Any], model: Mapping[str, Any]) -> tuple[Decide, bool] | None:
    """A function settling the expression from presence where it can, and whether what it settles depends
    on presence alone (no item counts: the same for every object with the same elements present and
    non-empty); None when no part of the expression can ever be settled."""
    try:
        (root,) = tree["children"]
    except (KeyError, TypeError, ValueError):
        return None
    presence = _Presence(model)
    decide = presence.expression(root)
    if not presence.settles or decide is _unsettled:
        return None
    return decide, not presence.counts
