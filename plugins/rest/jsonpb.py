"""JSON <-> etcd protobuf messages with the conventions of etcd 3.4's gRPC gateway.

etcd's gateway (grpc-gateway v1 with golang/protobuf's ``jsonpb``, ``OrigName: true``) writes:
field names as in the ``.proto`` (``create_revision``, ``dbSize``, ``ID``); 64-bit integers as
strings, 32-bit ones as numbers; enums by name; bytes as standard base64; fields holding their
zero value left out; fields in field-number order. It reads: the ``.proto`` name or the lowerCamel
JSON name of each field; numbers as JSON numbers or as strings holding one; enums by name or number;
``null`` as "not set"; unknown fields ignored; only the first JSON value of the body.

``google.protobuf.json_format`` is close but not the same (it decodes bad base64 without complaint,
accepts float literals for integers, and is slower), so this module walks the descriptors itself,
with one converter per field built once per message type. Error texts copy what etcd's gateway says
(Go's ``encoding/json`` and ``encoding/base64`` texts) where a client could see the difference.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any

import orjson
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = ["JsonError", "decode", "decode_value", "encode", "first_value", "split_values", "to_dict"]


class JsonError(ValueError):
    """A body that does not decode into the request message (the gateway answers 400, code 3)."""


class _Float(str):
    """A JSON number literal with a fraction or exponent, kept as written (Go quotes it in errors)."""


def _no_constant(name: str) -> Any:
    raise JsonError(f"invalid character '{name[0]}' looking for beginning of value")


_DECODER = json.JSONDecoder(parse_float=_Float, parse_constant=_no_constant)
_WS = re.compile(r"[ \t\n\r]*")

# -- what Go calls each type in "json: cannot unmarshal X into Go value of type T" -----------------------

_GO_TYPES = {
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_SINT64: "int64",
    FieldDescriptor.TYPE_SFIXED64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_FIXED64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_SINT32: "int32",
    FieldDescriptor.TYPE_SFIXED32: "int32",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_FIXED32: "uint32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "[]uint8",
    FieldDescriptor.TYPE_DOUBLE: "float64",
    FieldDescriptor.TYPE_FLOAT: "float32",
}
_INT_RANGES = {
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}
_LONG_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED64,
    }
)


def _json_kind(value: Any) -> str:
    if value is True or value is False:
        return "bool"
    if isinstance(value, str) and not isinstance(value, _Float):
        return "string"
    if isinstance(value, int | float | _Float):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_error(value: Any, go_type: str) -> JsonError:
    """Go names the number itself only when it was headed for a numeric type (an int, or an enum)."""
    kind = _json_kind(value)
    if (
        kind == "number"
        and go_type not in ("bool", "string", "[]uint8")
        and not go_type.startswith(("map[", "[]"))
    ):
        return JsonError(f"json: cannot unmarshal number {value} into Go value of type {go_type}")
    return JsonError(f"json: cannot unmarshal {kind} into Go value of type {go_type}")


def _go_enum_name(enum: EnumDescriptor) -> str:
    """``etcdserverpb.RangeRequest.SortOrder`` -> ``etcdserverpb.RangeRequest_SortOrder`` (Go's name)."""
    package = enum.file.package
    local = enum.full_name[len(package) + 1 :] if package else enum.full_name
    return f"{package}.{local.replace('.', '_')}" if package else local.replace(".", "_")


def _syntax_error(text: str, e: json.JSONDecodeError) -> JsonError:
    """Go's wording for the common JSON syntax errors (``invalid character 'x' looking for ...``)."""
    pos = e.pos
    if pos >= len(text) or text[pos:].strip() == "":
        return JsonError("unexpected EOF")
    char = text[pos]
    shown = "'\\''" if char == "'" else f"'{char}'"
    msg = e.msg
    if msg.startswith("Expecting property name"):
        context = "looking for beginning of object key string"
    elif msg.startswith("Expecting ':'"):
        context = "after object key"
    elif msg.startswith("Expecting ','"):
        context = "after object key:value pair" if _inside_object(text, pos) else "after array element"
    elif msg.startswith("Invalid control character"):
        context = "in string literal"
    elif msg.startswith("Invalid \\escape") or msg.startswith("Invalid \\u"):
        context = "in string escape code"
    else:
        context = "looking for beginning of value"
    return JsonError(f"invalid character {shown} {context}")


def _inside_object(text: str, pos: int) -> bool:
    """Whether ``pos`` is directly inside an object (rather than an array), ignoring strings."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
    return bool(stack) and stack[-1] == "{"


def _parse_text(text: str) -> Any:
    """The one JSON value in ``text`` (the inside of a quoted number), with Go's error texts."""
    stripped = text.strip(" \t\n\r")
    if not stripped:
        raise JsonError("unexpected end of JSON input")
    try:
        value, end = _DECODER.raw_decode(stripped)
    except json.JSONDecodeError as e:
        raise _syntax_error(stripped, e) from None
    if end != len(stripped):
        char = stripped[end]
        raise JsonError(f"invalid character '{char}' after top-level value")
    return value


# -- decoding -------------------------------------------------------------------------------------------

Setter = Callable[[Message, Any], None]


def _int_converter(go_type: str) -> Callable[[Any], int]:
    low, high = _INT_RANGES[go_type]

    def convert(value: Any) -> int:
        if isinstance(value, str) and not isinstance(value, _Float):
            value = _parse_text(value)  # jsonpb drops the quotes and decodes what is inside
        if value is True or value is False or not isinstance(value, int):
            if value is None:
                return 0
            raise _type_error(value, go_type)
        if not low <= value <= high:
            raise JsonError(f"json: cannot unmarshal number {value} into Go value of type {go_type}")
        return value

    return convert


def _scalar_converter(field: FieldDescriptor) -> Callable[[Any], Any]:
    ftype = field.type
    if ftype == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        go_name = _go_enum_name(enum)
        by_name = {v.name: v.number for v in enum.values}
        to_int = _int_converter("int32")

        def enum_value(value: Any) -> int:
            if isinstance(value, str) and not isinstance(value, _Float):
                number = by_name.get(value)
                if number is None:
                    raise JsonError(f'unknown value "{value}" for enum {go_name}')
                return number
            try:
                return to_int(value)
            except JsonError:
                raise _type_error(value, go_name) from None

        return enum_value
    go_type = _GO_TYPES[ftype]
    if go_type in _INT_RANGES:
        return _int_converter(go_type)
    if ftype == FieldDescriptor.TYPE_BOOL:

        def boolean(value: Any) -> bool:
            if value is True or value is False:
                return value
            raise _type_error(value, "bool")

        return boolean
    if ftype == FieldDescriptor.TYPE_STRING:

        def string(value: Any) -> str:
            if isinstance(value, str) and not isinstance(value, _Float):
                return value
            raise _type_error(value, "string")

        return string
    if ftype == FieldDescriptor.TYPE_BYTES:
        return _bytes_value

    def number(value: Any) -> float:
        if isinstance(value, str) and not isinstance(value, _Float):
            value = _parse_text(value)
        if isinstance(value, int | float | _Float) and value is not True and value is not False:
            return float(value)
        raise _type_error(value, go_type)

    return number


_B64_ALPHABET = re.compile(rb"[^A-Za-z0-9+/=]")


def _bytes_value(value: Any) -> bytes:
    """Go's ``base64.StdEncoding``: padding required, ``\\r`` and ``\\n`` skipped, nothing else."""
    if not isinstance(value, str) or isinstance(value, _Float):
        raise _type_error(value, "[]uint8")
    raw = value.encode("utf-8", "surrogatepass")
    if b"\n" in raw or b"\r" in raw:
        raw = raw.replace(b"\n", b"").replace(b"\r", b"")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise JsonError(f"illegal base64 data at input byte {_base64_error_offset(raw)}") from None


def _base64_error_offset(raw: bytes) -> int:
    bad = _B64_ALPHABET.search(raw)
    pad = raw.find(b"=")
    if bad is not None and (pad < 0 or bad.start() < pad):
        return bad.start()
    if pad >= 0:
        quantum_start = pad - pad % 4
        # "xx==" and "xxx=" end a quantum; any other use of '=' is an error at the quantum's start
        tail = raw[pad:]
        if (pad % 4 == 2 and tail[:2] == b"==" and len(tail) == 2) or (pad % 4 == 3 and len(tail) == 1):
            return len(raw)
        return quantum_start if pad % 4 < 2 else pad
    return len(raw) - len(raw) % 4  # a truncated final quantum


class _MessageCodec:
    """Per message type: how to fill each field from JSON, and how to write each set field as JSON."""

    __slots__ = ("descriptor", "fields")

    def __init__(self, descriptor: Descriptor) -> None:
        self.descriptor = descriptor
        self.fields: list[tuple[str, str, Setter]] = []
        for field in sorted(descriptor.fields, key=lambda f: f.number):
            self.fields.append((field.name, field.json_name, _setter(field)))

    def fill(self, message: Message, obj: Any) -> None:
        if obj is None:
            return
        if not isinstance(obj, dict):
            raise _type_error(obj, "map[string]json.RawMessage")
        for name, camel, setter in self.fields:
            if camel in obj:
                value = obj[camel]
            elif name in obj:
                value = obj[name]
            else:
                continue
            if value is not None:
                setter(message, value)


def _setter(field: FieldDescriptor) -> Setter:
    name = field.name
    repeated = field.is_repeated
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.GetOptions().map_entry:
            raise NotImplementedError("map fields are not used by etcd's API")
        sub = field.message_type
        if repeated:

            def set_messages(message: Message, value: Any) -> None:
                if not isinstance(value, list):
                    raise _type_error(value, "[]json.RawMessage")
                codec = _codec(sub)
                items = getattr(message, name)
                for item in value:
                    child = items.add()
                    codec.fill(child, item)

            return set_messages

        def set_message(message: Message, value: Any) -> None:
            child = getattr(message, name)
            _codec(sub).fill(child, value)
            child.SetInParent()

        return set_message
    convert = _scalar_converter(field)
    if repeated:

        def set_list(message: Message, value: Any) -> None:
            if not isinstance(value, list):
                raise _type_error(value, "[]json.RawMessage")
            getattr(message, name).extend(convert(v) for v in value if v is not None)

        return set_list

    def set_scalar(message: Message, value: Any) -> None:
        try:
            setattr(message, name, convert(value))
        except (ValueError, TypeError) as e:  # e.g. a lone surrogate in a string
            if isinstance(e, JsonError):
                raise
            raise JsonError(f"json: cannot unmarshal {_json_kind(value)} into field {name}: {e}") from None

    return set_scalar


_CODECS: dict[str, _MessageCodec] = {}


def _codec(descriptor: Descriptor) -> _MessageCodec:
    codec = _CODECS.get(descriptor.full_name)
    if codec is None:
        codec = _CODECS[descriptor.full_name] = _MessageCodec(descriptor)
    return codec


def first_value(text: str, start: int = 0) -> tuple[Any, int] | None:
    """Decode the JSON value at ``start`` (after whitespace): ``(value, end)``, or None at end of text."""
    start = _WS.match(text, start).end()
    if start >= len(text):
        return None
    try:
        return _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise _syntax_error(text, e) from None


def decode_value(value: Any, message_type: type[Message]) -> Message:
    """A message of ``message_type`` from an already decoded JSON value."""
    message = message_type()
    _codec(message.DESCRIPTOR).fill(message, value)
    return message


def decode(body: bytes, message_type: type[Message]) -> Message:
    """The request message in an HTTP body, as the gateway reads it (an empty body is an empty message)."""
    text = body.decode("utf-8", "replace")
    found = first_value(text)
    if found is None:
        return message_type()
    return decode_value(found[0], message_type)


def split_values(text: str) -> tuple[list[Any], int, JsonError | None]:
    """The complete JSON values at the start of a streamed body: ``(values, consumed, error)``.

    A value cut off at the end of ``text`` is left unconsumed (more of the body may follow);
    ``error`` is the syntax error of a value that can never become valid.
    """
    values: list[Any] = []
    pos = 0
    while True:
        start = _WS.match(text, pos).end()
        if start >= len(text):
            return values, start, None
        try:
            value, end = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError as e:
            if e.pos >= len(text) or e.msg.startswith("Unterminated string") or _cut_off(text, e):
                return values, start, None
            return values, start, _syntax_error(text, e)
        except JsonError as e:
            return values, start, e
        # a number at the very end may continue in the next chunk ("12" + "3")
        if end == len(text) and not isinstance(value, dict | list | str):
            return values, start, None
        values.append(value)
        pos = end


def _cut_off(text: str, e: json.JSONDecodeError) -> bool:
    """A truncated literal (``tr`` of ``true``, ``-`` of ``-1``) or escape at the end of the text."""
    rest = text[e.pos :]
    return len(rest) < 6 and any(word.startswith(rest) for word in ("true", "false", "null", "-"))


# -- encoding -------------------------------------------------------------------------------------------


def _encoder(field: FieldDescriptor) -> Callable[[Any], Any]:
    ftype = field.type
    if ftype == FieldDescriptor.TYPE_MESSAGE:
        return to_dict
    if ftype in _LONG_TYPES:
        return str
    if ftype == FieldDescriptor.TYPE_BYTES:
        return lambda v: base64.b64encode(v).decode("ascii")
    if ftype == FieldDescriptor.TYPE_ENUM:
        names = {v.number: v.name for v in field.enum_type.values}
        return lambda v: names.get(v, v)
    return lambda v: v


_ENCODERS: dict[str, tuple[str, Callable[[Any], Any], bool]] = {}


def to_dict(message: Message) -> dict[str, Any]:
    """The message as jsonpb writes it with ``OrigName`` (set fields only, in field-number order)."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        spec = _ENCODERS.get(field.full_name)
        if spec is None:
            repeated = field.is_repeated
            spec = _ENCODERS[field.full_name] = (field.name, _encoder(field), repeated)
        name, convert, repeated = spec
        out[name] = [convert(v) for v in value] if repeated else convert(value)
    return out


_HTML = {b"<": b"\\u003c", b">": b"\\u003e", b"&": b"\\u0026"}
_HTML_CHARS = re.compile(rb"[<>&]|\xe2\x80[\xa8\xa9]")


def _escape(match: re.Match[bytes]) -> bytes:
    text = match.group()
    return _HTML.get(text) or (b"\\u2028" if text.endswith(b"\xa8") else b"\\u2029")


def encode(value: Any) -> bytes:
    """Compact JSON as Go's encoder writes it (``<``, ``>``, ``&``, U+2028/9 escaped inside strings)."""
    data = orjson.dumps(value)
    if _HTML_CHARS.search(data):
        data = _HTML_CHARS.sub(_escape, data)
    return data
