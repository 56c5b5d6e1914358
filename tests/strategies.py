"""Hypothesis strategies shared by the tests: every value msgpack can carry, nested."""

from hypothesis import strategies as st


def msgpack_values(*, allow_nan: bool = True, max_leaves: int = 12) -> st.SearchStrategy:
    """None, bools, 64-bit ints, floats, str, bytes, and lists and maps of those."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats(allow_nan=allow_nan)
        | st.text(max_size=8)
        | st.binary(max_size=16)
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )
