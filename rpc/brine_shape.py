"""The shape of an RPyC request, read from its brine tags before it is decoded.

brine (RPyC's encoding of plain values) builds an object per tag, and some tags are
one or two bytes for a large object: an empty frozenset is 2 bytes and 216 decoded, so
a client frame of 4 MiB decoded to 470 MB. Walking the tags costs a little Python per
tag and allocates nothing, so a request of more objects than any call needs, or nested
deeper, is refused before ``brine.load`` builds one of them. A request's bytes cost
what they weigh and its strings up to 4 times that (one 4-byte character makes every
character of a str 4 bytes); everything else is bounded by the object count.
"""
from __future__ import annotations

#: Objects one request may decode to. A call carries a few; the largest legitimate one,
#: ``execute_batch`` with 1,024 commands as tuples, about 4,100. At most ~220 bytes
#: each (a frozenset), so 1.8 MB besides the request's own bytes and strings. A request
#: of at most this many bytes cannot hold more: it need not be walked.
MAX_OBJECTS = 8_192
#: Items of one frozenset. brine.load builds a frozenset in one C call that holds the
#: GIL, and values of one hash (ints k*(2**61-1)+c, complex(c-1000003*k, k): 17 bytes
#: each) compare with every item before them: 8,000 of them (136 kB) stalled the whole
#: process for 0.6 s, past a leader's election timeout (0.25 s). No call sends a
#: frozenset; 64 colliding items cost about 2,000 comparisons.
MAX_SET_ITEMS = 64
#: Tuples, frozensets, slices and strings open inside each other at most this deep
#: (brine.load recurses: a deep request would end in a RecursionError, after building
#: every level).
MAX_DEPTH = 32

# brine's tags (rpyc.core.brine, a stable format since RPyC 4)
_SINGLETONS = frozenset(range(0x00, 0x07))  # None, b"", (), True, False, NotImplemented, Ellipsis
_IMMEDIATE_INTS = range(0x20, 0xF0)  # -0x30 .. 0x9f, the int is the tag
_UNICODE = 0x08  # then one value: the UTF-8 bytes
_FIXED = {0x0A: 1, 0x0B: 2, 0x0C: 3, 0x0D: 4, 0x18: 8, 0x1B: 16}  # bytes of 1-4, float, complex
_SIZED = {0x0E: 1, 0x0F: 4, 0x16: 1, 0x17: 4}  # bytes / int digits: a 1- or 4-byte length, then that many
_TUPLES = {0x10: 1, 0x11: 2, 0x12: 3, 0x13: 4}
_TUPLE_SIZED = {0x14: 1, 0x15: 4}  # a 1- or 4-byte item count, then the items
# What brine puts after a tag that wraps one value. brine.load takes any value there,
# and some are far larger than counted: frozenset() of a str is a set of its characters
# (4 MiB of distinct 4-byte characters: 3 values counted, a million strings built).
_BYTES_TAGS = frozenset((0x01, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F))
_TUPLE_TAGS = frozenset((0x02, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15))
_INSIDE = {_UNICODE: (_BYTES_TAGS, "a str of"), 0x19: (frozenset((0x12,)), "a slice of"),
           0x1A: (_TUPLE_TAGS, "a frozenset of")}
_NAMES = {0x01: "a bytes", 0x0A: "a bytes", 0x0B: "a bytes", 0x0C: "a bytes", 0x0D: "a bytes", 0x0E: "a bytes",
          0x0F: "a bytes", 0x08: "a str", 0x02: "a tuple of 0", 0x10: "a tuple of 1", 0x11: "a tuple of 2",
          0x12: "a tuple of 3", 0x13: "a tuple of 4", 0x14: "a tuple", 0x15: "a tuple", 0x19: "a slice",
          0x1A: "a frozenset"}


def check_request(data: bytes | memoryview, start: int = 0, *, max_objects: int = MAX_OBJECTS,
                  max_depth: int = MAX_DEPTH) -> int:
    """Walk one brine value in ``data[start:]``, which must end where it ends; return
    the number of objects it decodes to, or raise ValueError naming what is wrong."""
    view = memoryview(data)
    end = len(view)
    pos = start
    left = [1]  # values still to read at each open level (the outermost: one)
    objects = 0
    while left:
        if left[-1] == 0:
            left.pop()
            continue
        left[-1] -= 1
        if pos >= end:
            raise ValueError("request ends inside a value")
        tag = view[pos]
        pos += 1
        objects += 1
        if objects > max_objects:
            raise ValueError(f"request of more than {max_objects:,} values (a call needs a few)")
        if tag in _IMMEDIATE_INTS or tag in _SINGLETONS:
            continue
        opens = 0
        if tag in _FIXED:
            pos += _FIXED[tag]
        elif tag in _SIZED or tag in _TUPLE_SIZED:
            width = _SIZED.get(tag) or _TUPLE_SIZED[tag]
            if pos + width > end:
                raise ValueError("request ends inside a length")
            count = int.from_bytes(view[pos:pos + width], "big")
            pos += width
            if tag in _SIZED:
                pos += count
            else:
                opens = count
                if count > end - pos:  # each value is at least one byte
                    raise ValueError(f"request announces a tuple of {count:,} values in {end - pos:,} bytes")
        elif tag in _TUPLES:
            opens = _TUPLES[tag]
        elif tag in _INSIDE:
            allowed, what = _INSIDE[tag]
            if pos < end and view[pos] not in allowed:
                inner = view[pos]
                name = _NAMES.get(inner) or ("an int" if inner in _IMMEDIATE_INTS or inner in (0x16, 0x17)
                                             else f"tag 0x{inner:02x}")
                raise ValueError(f"request holds {what} {name}, which brine never writes")
            if tag == 0x1A and pos < end and view[pos] in _TUPLE_SIZED:
                width = _TUPLE_SIZED[view[pos]]
                items = int.from_bytes(view[pos + 1:pos + 1 + width], "big")
                if items > MAX_SET_ITEMS:
                    raise ValueError(f"request holds a frozenset of more than {MAX_SET_ITEMS} items")
            opens = 1
        else:
            raise ValueError(f"request holds an unknown brine tag 0x{tag:02x}")
        if pos > end:
            raise ValueError("request ends inside a value")
        if opens:
            if len(left) >= max_depth:
                raise ValueError(f"request nests deeper than {max_depth} levels")
            left.append(opens)
    if pos != end:
        raise ValueError(f"request has {end - pos:,} bytes after its value")
    return objects
