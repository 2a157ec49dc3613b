"""Variable-scope programs that run unchanged on real TF1 and on rnnkit.

Each program uses only the adapter names ``vs`` (variable_scope), ``gv`` (get_variable),
``AUTO``, ``const(v)``, ``ortho()`` and ``INT`` (an int32 dtype). ``run_program`` returns either
``{"vars": [(name, shape), ...]}`` or ``{"error": (type name, message)}``; values are read after.
"""

PROGRAMS = {
    "nested_names_and_reuse": """
with vs("a"):
    gv("v", [2])
    with vs("b"):
        gv("w", [2, 3])
with vs("a", reuse=True):
    gv("v", [2])
    with vs("b"):
        gv("w", [2, 3])
""",
    "default_name_numbering": """
for _ in range(3):
    with vs(None, default_name="cell"):
        gv("k", [1])
with vs("outer"):
    with vs(None, default_name="cell"):
        gv("k", [1])
    with vs(None, default_name="cell"):
        gv("k", [1])
    with vs("cell_5"):
        gv("k", [1])
    with vs(None, default_name="cell_5"):
        gv("k", [1])
with vs("outer", reuse=True):
    with vs(None, default_name="cell"):
        gv("k", [1])
    with vs(None, default_name="cell"):
        gv("k", [1])
""",
    "reenter_default_name_conflicts": """
with vs("outer"):
    with vs(None, default_name="cell"):
        gv("k", [1])
with vs("outer"):
    with vs(None, default_name="cell"):
        gv("k", [1])
""",
    "captured_scope_object": """
with vs("s") as s:
    gv("x", [1])
with vs(s, reuse=True):
    gv("x", [1])
with vs("t"):
    with vs(s):
        gv("y", [1])
    gv("z", [1])
""",
    "initializer_inheritance": """
with vs("m", initializer=const(3.0)):
    gv("a", [2])
    gv("b", [2], initializer=const(7.0))
    with vs("inner"):
        gv("c", [2])
        with vs("inner2", initializer=const(5.0)):
            gv("d", [2])
        gv("e", [2])
gv("f", [3, 4])
gv("i", [2], dtype=INT)
""",
    "captured_scope_keeps_initializer": """
with vs("m", initializer=const(3.0)) as m:
    pass
with vs(m):
    gv("a", [2])
with vs("other", initializer=const(4.0)):
    with vs(m):
        gv("b", [2])
""",
    "auto_reuse": """
with vs("r", reuse=AUTO):
    gv("a", [2])
    gv("a", [2])
    with vs("deep"):
        gv("b", [1])
with vs("r", reuse=AUTO):
    gv("a", [2])
    gv("c", [1])
""",
    "reuse_false_inherits_true": """
with vs("p"):
    with vs("q"):
        gv("a", [2])
with vs("p", reuse=True):
    with vs("q", reuse=False):
        gv("a", [2])
""",
    "reuse_variables_method": """
with vs("q") as sc:
    gv("a", [2])
    sc.reuse_variables()
    gv("a", [2])
""",
    "error_exists": """
with vs("e"):
    gv("a", [2])
with vs("e"):
    gv("a", [2])
""",
    "error_missing": """
with vs("e", reuse=True):
    gv("nothere", [2])
""",
    "error_shape_mismatch": """
with vs("e"):
    gv("a", [2])
with vs("e", reuse=True):
    gv("a", [3])
""",
    "error_default_name_with_reuse": """
with vs(None, default_name="x", reuse=True):
    gv("a", [1])
""",
    "error_no_name": """
with vs(None):
    gv("a", [1])
""",
    "error_no_shape": """
gv("a")
""",
}

# Programs whose TF error class differs in nothing but wording: the key phrase both must contain.
ERROR_PHRASES = {
    "reenter_default_name_conflicts": "already exists",
    "error_exists": "already exists",
    "error_missing": "does not exist",
    "error_shape_mismatch": "Trying to share variable e/a",
    "error_default_name_with_reuse": "reuse=True cannot be used without a name_or_scope",
    "error_no_name": "name_or_scope is required",
    "error_no_shape": "shape",
}


def run_program(src: str, api: dict) -> dict:
    """Execute one program against an adapter; return variables made or the error raised."""
    try:
        exec(src, dict(api))
    except (ValueError, TypeError) as exc:
        return {"error": [type(exc).__name__, str(exc)]}
    return {"ok": True}
