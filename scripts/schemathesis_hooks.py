"""schemathesis hooks for edgefn's API conformance test (loaded through SCHEMATHESIS_HOOKS).

They teach schemathesis what the OpenAPI document states in words because JSON Schema has
no keyword for it; nothing here loosens a check.
- `edgefn-selector`: a POP selector is a small grammar (crates/proto/src/selector.rs), not a
  pattern; valid ones are generated from that grammar.
- `edgefn-sql-change`: a schema change must pass the dry run on top of the database's
  ledger; changes that always do (`CREATE TABLE IF NOT EXISTS`) are generated.
- `application/wasm`: artifact bytes are sent as they are.
- `min_hot_instances` is at most `max_hot_instances` (default 16): a rule between two
  fields, which the document says in the field's description.
- A negative case that negates only the `format` of a string drops the format and draws any
  string, then counts it as invalid because schemathesis cannot check a format of ours; yet
  the empty string and `true` are valid selectors. Such a draw is made invalid for real (a
  leading `)`, which no selector, SQL change or standard format admits): this tightens the
  check.
"""

import schemathesis
from hypothesis import strategies as st

IDENTIFIER = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
STRING = st.from_regex(r"[a-z0-9 .-]{0,8}", fullmatch=True).map(lambda s: f"'{s}'")
LABEL = st.one_of(IDENTIFIER, IDENTIFIER.map(lambda i: f"labels.{i}"), STRING.map(lambda s: f"labels[{s}]"))
PRIMARY = st.one_of(
    st.sampled_from(["true", "false"]),
    LABEL.map(lambda l: f"has({l})"),
    st.tuples(LABEL, st.sampled_from(["==", "!="]), STRING).map(" ".join),
    st.tuples(LABEL, st.lists(STRING, min_size=1, max_size=3)).map(lambda t: f"{t[0]} in [{', '.join(t[1])}]"),
)
SELECTOR = st.recursive(
    PRIMARY,
    lambda inner: st.one_of(
        inner.map(lambda e: f"!{e}"),
        inner.map(lambda e: f"({e})"),
        st.tuples(inner, st.sampled_from(["&&", "||"]), inner).map(" ".join),
    ),
    max_leaves=6,
)
schemathesis.openapi.format("edgefn-selector", st.one_of(st.just(""), SELECTOR))
SQL_CHANGE = st.tuples(IDENTIFIER, IDENTIFIER, st.sampled_from(["INTEGER", "TEXT", "REAL", "BLOB", ""])).map(
    lambda t: f"CREATE TABLE IF NOT EXISTS t_{t[0]} (c_{t[1]} {t[2]});"
)
schemathesis.openapi.format("edgefn-sql-change", SQL_CHANGE)


@schemathesis.serializer("application/wasm")
def wasm(ctx, value):
    return value if isinstance(value, bytes) else str(value).encode()


@schemathesis.hook
def filter_body(ctx, body):
    if not isinstance(body, dict):
        return True
    low, high = body.get("min_hot_instances"), body.get("max_hot_instances")
    if isinstance(low, (int, float)) and not isinstance(low, bool):
        return low <= (high if isinstance(high, (int, float)) and not isinstance(high, bool) else 16)
    return True


@schemathesis.hook
def map_case(ctx, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_negative or not isinstance(case.body, dict):
        return case
    for mutation in getattr(meta.phase.data, "mutations", ()):
        if "format" not in mutation.keywords or mutation.parameter_location.value != "body" or not mutation.path:
            continue
        parent = case.body
        for key in mutation.path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        last = mutation.path[-1]
        if isinstance(parent, dict) and isinstance(parent.get(last), str):
            parent[last] = ")" + parent[last]
    return case
