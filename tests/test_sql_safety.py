"""No SQL text in dacc/ is built from input: an f-string, `.format()` or `%` that makes
SQL may interpolate only module constants (UPPER_CASE names bound at module level,
from a fixed whitelist in code), never a variable."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dacc"
SQL = re.compile(
    r"\b(SELECT|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX|VIEW|MATERIALIZED)|"
    r"DROP\s+(TABLE|INDEX|VIEW)|ALTER\s+TABLE|COPY\s+\w+|TRUNCATE|REFRESH\s+MATERIALIZED)\b",
    re.IGNORECASE,
)
CONSTANT = re.compile(r"^_?[A-Z][A-Z0-9_]*$")


def _module_constants(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        for target in targets:
            if isinstance(target, ast.Name) and CONSTANT.match(target.id):
                names.add(target.id)
        if isinstance(node, ast.ImportFrom):
            names.update(
                alias.asname or alias.name
                for alias in node.names
                if CONSTANT.match(alias.asname or alias.name)
            )
    return names


def _allowed(expr: ast.AST, constants: set[str]) -> bool:
    """A module constant, an attribute of one (`sql.MERGE`), or a constant's item."""
    if isinstance(expr, ast.Name):
        return expr.id in constants
    if isinstance(expr, ast.Attribute):
        return CONSTANT.match(expr.attr) is not None and isinstance(expr.value, ast.Name)
    if isinstance(expr, ast.Subscript):
        return _allowed(expr.value, constants)
    return isinstance(expr, ast.Constant)


def _literal_text(node: ast.AST) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant))
    return ""


def sql_built_from_variables(source: str) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    constants = _module_constants(tree)
    faults = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and SQL.search(_literal_text(node)):
            for value in node.values:
                if isinstance(value, ast.FormattedValue) and not _allowed(value.value, constants):
                    faults.append((node.lineno, ast.unparse(value.value)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format"
            and SQL.search(_literal_text(node.func.value))
        ):
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if not _allowed(arg, constants):
                    faults.append((node.lineno, ast.unparse(arg)))
        elif (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Mod)
            and SQL.search(_literal_text(node.left))
        ):
            args = node.right.elts if isinstance(node.right, ast.Tuple) else [node.right]
            for arg in args:
                if not _allowed(arg, constants):
                    faults.append((node.lineno, ast.unparse(arg)))
    return faults


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_sql_text_is_formatted_from_a_variable(path):
    assert sql_built_from_variables(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "source",
    [
        "def f(name):\n    return f\"SELECT * FROM t WHERE name = '{name}'\"",
        'def f(table):\n    return "DELETE FROM {} WHERE 1".format(table)',
        'def f(x):\n    return "SELECT %s FROM t" % x',
        'LOCK = 1\ndef f(a):\n    return f"SELECT pg_advisory_lock({LOCK}) FROM t WHERE x = {a.b}"',
    ],
)
def test_the_check_finds_sql_built_from_variables(source):
    assert sql_built_from_variables(source)


def test_the_check_allows_module_constants():
    source = 'LOCK = "hashtext(1)"\nCOLUMNS = "(a, b)"\nq = f"SELECT pg_try_advisory_lock({LOCK}) FROM t {COLUMNS}"'
    assert sql_built_from_variables(source) == []
