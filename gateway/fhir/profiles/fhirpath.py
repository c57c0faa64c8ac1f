"""FHIRPath for profiles: each expression is checked (syntax, function and variable names) and compiled once.

Compiling goes, in order, to: the shape `a.b.where(x = 'y' and ...).exists()` of enforcement `when`s
(answered by a few dict lookups); the native closures of `native` when the whole expression is inside its
subset (see that module); fhirpathpy otherwise, with invariants guarded by `iif($this = 'lit', ..., true)`
short-circuited when the guard is plainly false. A native program that meets an input it leaves to
fhirpathpy (it raises `Defer`), or fails in any other way, is answered by fhirpathpy, so results never
differ from fhirpathpy's. It also gives what the presence of elements settles of an expression
(`presence_settler`), and exposes the R4 model lookups (choice types, element type paths) that the
compiler and the walker need. Only it and `native` use fhirpathpy; it imports only `native` and
`presence`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Final

import fhirpathpy
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.engine.nodes import ResourceNode, TypeInfo
from fhirpathpy.models import models as _fhirpath_models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from gateway.fhir.profiles.native import Node, NotNative, compile_native, make_node
from gateway.fhir.profiles.presence import Decide, compile_presence

# antlr4 (fhirpathpy's parser runtime) has no type information; reached through importlib so that mypy
# does not need it, and fhirpathpy's untyped helpers are called through Any-typed aliases for the same reason.
_antlr: Any = importlib.import_module("antlr4")
_resource_node: Callable[[Any, Any], Any] = ResourceNode
_ast_listener: Any = ASTPathListener
_type_info: Any = TypeInfo

Evaluator = Callable[[Any, Mapping[str, Any]], list[Any]]


def typed_node(value: Any, model_path: str) -> Node:
    """The context for evaluating an expression on an inner value: the value with its model type path (so
    that choice names and type tests resolve). Every evaluator here accepts it; fhirpathpy gets its own
    ResourceNode only when it is called."""
    return make_node(value, model_path)


def _unwrap(context: Any) -> Any:
    """The JSON value of a context, whichever wrapper it comes in."""
    return context.data if isinstance(context, Node | ResourceNode) else context


def _by_fhirpathpy(compiled: Evaluator) -> Evaluator:
    """fhirpathpy's evaluator, fed a ResourceNode in place of a native Node context."""

    def evaluate(context: Any, env: Mapping[str, Any]) -> list[Any]:
        if type(context) is Node:
            context = _resource_node(context.data, context.path)
        return compiled(context, env)

    return evaluate


# Variables the evaluator supplies to every expression (see walker.Walk.env).
_FHIRPATH_VARIABLES: Final = frozenset({"resource", "rootResource", "context", "ucum"})

# fhirpathpy's R4 model resolves choice elements (`value` -> valueQuantity) and element types (`is Quantity`).
_MODEL: Final[dict[str, Any]] = _fhirpath_models["r4"]
_PATH_TO_TYPE: Final[dict[str, str]] = _MODEL["path2Type"]
CHOICE_TYPES: Final[dict[str, list[str]]] = _MODEL["choiceTypePaths"]
DEFINED_ELSEWHERE: Final[dict[str, str]] = _MODEL["pathsDefinedElsewhere"]

# fhirpathpy keeps the model of its type tests in a global that its `is` operator sets on first use; until
# then `ofType()` ignores the type hierarchy. Set it once so that its answers do not depend on whether some
# `is` ran before (the native type tests always use the hierarchy).
_type_info.model = _MODEL


class _RaisingListener:
    """ANTLR error listener that turns syntax errors into ValueError (fhirpathpy's own listener is silent)."""

    def syntaxError(self, recognizer: Any, symbol: Any, line: int, column: int, msg: str, e: Any) -> None:
        raise ValueError(f"FHIRPath syntax error at column {column}: {msg}")

    def reportAmbiguity(self, *args: Any) -> None:
        """Ambiguity reports are diagnostics, not errors."""

    def reportAttemptingFullContext(self, *args: Any) -> None:
        """Not an error."""

    def reportContextSensitivity(self, *args: Any) -> None:
        """Not an error."""


@lru_cache(maxsize=1024)
def _checked_tree(expression: str) -> Any:
    """The parse tree of `expression` (fhirpathpy's form), from one parse that raises ValueError unless the
    whole expression parses (fhirpathpy's own parser drops what it cannot parse).

    Compiling reads the tree and never changes it, so a tree is shared by the compilers of one expression
    (an invariant is compiled natively and for presence); fhirpathpy's evaluator gets a parse of its own.
    """
    lexer: Any = FHIRPathLexer(_antlr.InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_RaisingListener())
    parser: Any = FHIRPathParser(_antlr.CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(_RaisingListener())
    parsed = parser.expression()
    trailing = parser.getCurrentToken()
    if trailing.type != -1:  # -1 is ANTLR's EOF: anything left over was not part of the expression
        raise ValueError(f"FHIRPath syntax error at column {trailing.column}: unexpected {trailing.text!r}")
    listener = _ast_listener()
    _antlr.ParseTreeWalker().walk(listener, parsed)
    return listener.parentStack[0]


def _check_names(node: Any) -> None:
    """Raise ValueError for unknown functions or %variables, which fhirpathpy reports only when reached."""
    if isinstance(node, list):
        for item in node:
            _check_names(item)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in ("Functn", "ExternalConstant"):
        identifiers = [c for c in node.get("children", []) if c.get("type") == "Identifier"]
        name = str(identifiers[0].get("text", "")).strip("`") if identifiers else ""
        if kind == "Functn" and name not in invocation_registry:
            raise ValueError(f"unknown FHIRPath function {name}()")
        if kind == "ExternalConstant" and name not in _FHIRPATH_VARIABLES:
            raise ValueError(f"unknown FHIRPath variable %{name or '?'}")
    _check_names(node.get("children", []))


# `a.b.where(x = 'y' and z = 'w').exists()`: the usual shape of an enforcement `when`. fhirpathpy needs about
# 200 us for it; the native version below about 2 us, and it runs on every write of the type.
_SIMPLE_EXISTS: Final = re.compile(
    r"^(?P<path>[a-z][A-Za-z0-9]*(?:\.[a-z][A-Za-z0-9]*)*)"
    r"\.where\((?P<conds>[a-z][A-Za-z0-9]* = '[^'\\]*'(?: and [a-z][A-Za-z0-9]* = '[^'\\]*')*)\)\.exists\(\)$"
)
_CONDITION: Final = re.compile(r"([a-z][A-Za-z0-9]*) = '([^'\\]*)'")


def child_model_path(parent: str, key: str) -> str:
    """fhirpathpy's type path of the child `key` of an element whose type path is `parent`."""
    path = f"{parent}.{key}"
    path = DEFINED_ELSEWHERE.get(path, path)
    return _PATH_TO_TYPE.get(path, path)


def _fast_exists(expression: str, model_path: str) -> Evaluator | None:
    """A native evaluator for `_SIMPLE_EXISTS` expressions, or None when the expression has another shape.

    Only plain member names qualify: a name that is a choice element (`value`) needs the model, so those
    expressions stay with fhirpathpy.
    """
    match = _SIMPLE_EXISTS.match(expression)
    if not match or not model_path:  # without the element's type, choice names cannot be ruled out
        return None
    steps = match["path"].split(".")
    conditions = tuple(_CONDITION.findall(match["conds"]))
    current = model_path
    for name in steps:
        if f"{current}.{name}" in CHOICE_TYPES:
            return None
        current = child_model_path(current, name)
    if any(f"{current}.{name}" in CHOICE_TYPES for name, _ in conditions):
        return None

    def evaluate(context: Any, env: Mapping[str, Any]) -> list[Any]:
        """True when some item at the path has every condition's field equal to its literal."""
        items = [_unwrap(context)]
        for step in steps:
            items = [child for item in items for child in _children(item, step)]
        return [any(all(_string_equals(item, f, v) for f, v in conditions) for item in items)]

    return evaluate


def _children(item: Any, name: str) -> list[Any]:
    """FHIRPath member navigation on plain JSON: the value of `name`, flattened when it repeats."""
    if not isinstance(item, dict) or name not in item:
        return []
    value = item[name]
    return value if isinstance(value, list) else [value]


def _string_equals(item: Any, name: str, literal: str) -> bool:
    """FHIRPath `name = 'literal'` on one item: a singleton string equal to the literal."""
    values = _children(item, name)
    return len(values) == 1 and values[0] == literal


def _this_equals_guard(tree: Any) -> str | None:
    """'lit' when the parsed expression is `iif($this = 'lit', <anything>, true)`, else None."""
    try:
        (term,) = tree["children"]
        # TermExpression > InvocationTerm > FunctionInvocation > Functn(Identifier, ParamList)
        functn = term["children"][0]["children"][0]["children"][0]
        name, params = functn["children"]
        condition, _, otherwise = params["children"]
        this, literal = condition["children"]
        string = literal["children"][0]["children"][0]  # LiteralTerm > StringLiteral
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    shape_ok = (
        term.get("type") == "TermExpression"
        and functn.get("type") == "Functn"
        and name.get("text") == "iif"
        and condition.get("type") == "EqualityExpression"
        and condition.get("terminalNodeText") == ["="]
        and this.get("text") == "$this"
        and string.get("type") == "StringLiteral"
        and otherwise.get("text") == "true"
    )
    text = str(string.get("text", ""))
    if not shape_ok or len(text) < 2 or "\\" in text:
        return None
    return text[1:-1]


def _guarded(literal: str, evaluate: Evaluator) -> Evaluator:
    """Skip fhirpathpy when the guard `$this = 'literal'` is plainly false: the iif then yields true.

    A context that is a string other than the literal makes the condition false, so the whole expression is
    [true]; anything else goes to the full evaluation. This saves about 30 us per guarded invariant.
    """

    def evaluate_guarded(context: Any, env: Mapping[str, Any]) -> list[Any]:
        data = _unwrap(context)
        if isinstance(data, str) and data != literal:
            return [True]
        return evaluate(context, env)

    return evaluate_guarded


def _fhirpathpy_when_asked(expression: str) -> Evaluator:
    """fhirpathpy's evaluator, compiled on its first call: most expressions are native and never ask it, and
    its parse was a third of the gateway's start-up time. Syntax and names are checked before this."""
    compiled: Evaluator | None = None

    def evaluate(context: Any, env: Mapping[str, Any]) -> list[Any]:
        nonlocal compiled
        if compiled is None:
            compiled = _by_fhirpathpy(fhirpathpy.compile(expression, _MODEL))
        return compiled(context, env)

    return evaluate


def _native(program: Evaluator, fallback: Evaluator) -> Evaluator:
    """The native program, with fhirpathpy answering the inputs the program defers."""

    def evaluate(context: Any, env: Mapping[str, Any]) -> list[Any]:
        try:
            return program(context, env)
        except Exception:  # Defer, or anything unforeseen: fhirpathpy's answer (or error) is the reference
            return fallback(context, env)

    return evaluate


def not_native_reason(expression: str) -> str | None:
    """Why `expression` is evaluated by fhirpathpy rather than natively; None when it is native."""
    try:
        compile_native(_checked_tree(expression), _MODEL)
    except NotNative as exc:
        return str(exc)
    return None


def compile_fhirpath(expression: str, model_path: str) -> Evaluator:
    """Check and compile an expression once; raise ValueError when it cannot work."""
    tree = _checked_tree(expression)
    _check_names(tree)
    fast = _fast_exists(expression, model_path)
    if fast is not None:
        return fast
    return _compile_full(expression, tree)


def presence_settler(expression: str) -> tuple[Decide, bool] | None:
    """What presence settles of an expression (see `presence`), and whether that depends only on which
    elements are present and non-empty (no counts); None when it never settles anything.

    A settled answer is FHIRPath's; it can differ from fhirpathpy's where fhirpathpy gives {} or fails on
    a primitive that has only an extension. So `compile_fhirpath` (which promises fhirpathpy's results)
    does not use it; the base R4 rules do, where only a false result counts."""
    return compile_presence(_checked_tree(expression), _MODEL)


def _compile_full(expression: str, tree: Any) -> Evaluator:
    """The native program (fhirpathpy answering what it defers), else fhirpathpy itself."""
    compiled = _fhirpathpy_when_asked(expression)
    try:
        return _native(compile_native(tree, _MODEL), compiled)
    except NotNative:
        pass
    literal = _this_equals_guard(tree)
    return compiled if literal is None else _guarded(literal, compiled)
