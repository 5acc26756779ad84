"""HPACK (RFC 7541): the header compression of HTTP/2, as a gRPC server needs it.

The decoder is complete (dynamic table, Huffman, table size updates) because clients use all of
it; it bounds what one header block may expand to, so a block of references to a large table
entry (an "HPACK bomb") costs its input size, not its output size. The encoder only writes
literals without indexing and static-table references: a server's response headers are few and
constant, so they are precomputed once (:func:`encode`) and never touch a dynamic table.
"""

from __future__ import annotations

from plugins.grpc.hpack_tables import HUFFMAN_CODES, STATIC_TABLE

ENTRY_OVERHEAD = 32  # RFC 7541 4.1: an entry's size is len(name) + len(value) + 32
MAX_INTEGER = 1 << 32  # no field of HTTP/2 needs more; a larger one is an attack

Header = tuple[bytes, bytes]


class HpackError(Exception):
    """A malformed header block: the connection must end with COMPRESSION_ERROR (RFC 9113 4.3)."""


def _huffman_lookup() -> dict[str, int]:
    """Bit-string of each code -> its byte; decoding tries the few code lengths in increasing order."""
    return {format(code, f"0{length}b"): byte for byte, (code, length) in enumerate(HUFFMAN_CODES)}


_HUFFMAN = _huffman_lookup()
_HUFFMAN_LENGTHS = sorted({length for _, length in HUFFMAN_CODES})


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman string: padding must be the most significant bits of EOS, at most 7 bits."""
    if not data:
        return b""
    bits = format(int.from_bytes(data, "big"), f"0{len(data) * 8}b")
    out = bytearray()
    position, end = 0, len(bits)
    lookup, lengths = _HUFFMAN, _HUFFMAN_LENGTHS
    while position < end:
        for length in lengths:
            byte = lookup.get(bits[position : position + length])
            if byte is not None:
                out.append(byte)
                position += length
                break
        else:
            tail = bits[position:]
            if len(tail) > 7 or tail.count("0"):
                raise HpackError("invalid Huffman padding or EOS in string")
            break
    return bytes(out)


def huffman_encode(data: bytes) -> bytes:
    value, bits = 0, 0
    for byte in data:
        code, length = HUFFMAN_CODES[byte]
        value = (value << length) | code
        bits += length
    padding = -bits % 8
    value = (value << padding) | ((1 << padding) - 1)
    return value.to_bytes((bits + padding) // 8, "big")


def encode_integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 5.1; ``first`` carries the representation's flag bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: bytes, huffman: bool) -> bytes:
    if huffman:
        coded = huffman_encode(value)
        return encode_integer(len(coded), 7, 0x80) + coded
    return encode_integer(len(value), 7) + value


_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _) in enumerate(STATIC_TABLE, 1):
    _STATIC_NAMES.setdefault(_name, _index)
_STATIC_FIELDS = {field: index for index, field in enumerate(STATIC_TABLE, 1)}


def encode(headers: list[Header], huffman: bool = False) -> bytes:
    """A header block of static-table references and literals without indexing (RFC 7541 6.2.2)."""
    out = bytearray()
    for name, value in headers:
        index = _STATIC_FIELDS.get((name, value))
        if index is not None:
            out += encode_integer(index, 7, 0x80)
            continue
        name_index = _STATIC_NAMES.get(name)
        if name_index is not None:
            out += encode_integer(name_index, 4)
        else:
            out += b"\x00" + _string(name, huffman)
        out += _string(value, huffman)
    return bytes(out)


class Decoder:
    """One connection's HPACK decoder state: the dynamic table, shared by all its header blocks."""

    def __init__(self, max_table_size: int = 4096, max_header_list_size: int = 64 * 1024) -> None:
        self.settings_table_size = max_table_size  # the most we advertised (SETTINGS_HEADER_TABLE_SIZE)
        self.table_size = max_table_size  # the current limit, lowered by the peer's size updates
        self.max_header_list_size = max_header_list_size
        self.entries: list[Header] = []  # newest first
        self.size = 0

    def decode(self, block: bytes) -> tuple[list[Header], bool]:
        """The header fields of one complete block, and whether the list fit the size limit.

        A list over the limit is still decoded to the end (the table must stay in step with the
        peer's) but its fields are dropped; the caller refuses the request.
        """
        headers: list[Header] = []
        fits = True
        list_size = 0
        position, end = 0, len(block)
        updates_allowed = True
        while position < end:
            first = block[position]
            if first & 0x80:  # indexed field
                index, position = self._integer(block, position, 7)
                name, value = self._field(index)
                add = False
            elif first & 0x40:  # literal with incremental indexing
                name, value, position = self._literal(block, position, 6)
                add = True
            elif first & 0x20:  # dynamic table size update: only at the start of a block
                if not updates_allowed:
                    raise HpackError("dynamic table size update after a header field")
                size, position = self._integer(block, position, 5)
                if size > self.settings_table_size:
                    raise HpackError(
                        f"table size update {size} over the advertised {self.settings_table_size}"
                    )
                self.table_size = size
                self._evict(0)
                continue
            else:  # literal without indexing (0000) or never indexed (0001)
                name, value, position = self._literal(block, position, 4)
                add = False
            updates_allowed = False
            if add:
                self._add(name, value)
            list_size += len(name) + len(value) + ENTRY_OVERHEAD
            if list_size > self.max_header_list_size:
                fits = False
            elif fits:
                headers.append((name, value))
        return (headers if fits else []), fits

    def _integer(self, block: bytes, position: int, prefix_bits: int) -> tuple[int, int]:
        limit = (1 << prefix_bits) - 1
        value = block[position] & limit
        position += 1
        if value < limit:
            return value, position
        shift = 0
        while True:
            if position >= len(block):
                raise HpackError("truncated integer")
            byte = block[position]
            position += 1
            value += (byte & 127) << shift
            shift += 7
            if value > MAX_INTEGER:
                raise HpackError("integer too large")
            if not byte & 128:
                return value, position

    def _string_at(self, block: bytes, position: int) -> tuple[bytes, int]:
        if position >= len(block):
            raise HpackError("truncated string")
        huffman = block[position] & 0x80
        length, position = self._integer(block, position, 7)
        end = position + length
        if end > len(block):
            raise HpackError("truncated string")
        raw = block[position:end]
        return (huffman_decode(raw) if huffman else raw), end

    def _literal(self, block: bytes, position: int, prefix_bits: int) -> tuple[bytes, bytes, int]:
        index, position = self._integer(block, position, prefix_bits)
        if index:
            name = self._field(index)[0]
        else:
            name, position = self._string_at(block, position)
        value, position = self._string_at(block, position)
        return name, value, position

    def _field(self, index: int) -> Header:
        if index == 0:
            raise HpackError("index 0")
        if index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        dynamic = index - len(STATIC_TABLE) - 1
        if dynamic >= len(self.entries):
            raise HpackError(f"index {index} beyond the tables")
        return self.entries[dynamic]

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + ENTRY_OVERHEAD
        self._evict(size)
        if size <= self.table_size:  # RFC 7541 4.4: an entry larger than the table empties it
            self.entries.insert(0, (name, value))
            self.size += size

    def _evict(self, room: int) -> None:
        while self.entries and self.size + room > self.table_size:
            name, value = self.entries.pop()
            self.size -= len(name) + len(value) + ENTRY_OVERHEAD
