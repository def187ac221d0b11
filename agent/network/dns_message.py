"""A small DNS message codec (RFC 1035): enough for the embedded resolver.

Only the parts the resolver needs: the header, the question section (names with compression
pointers are read), and A-record answers (written without compression). Everything else
in a query (answers, authority, additional records such as EDNS OPT) is ignored; a reply
carries the question back and no additional records.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

TYPE_A = 1
TYPE_AAAA = 28
CLASS_IN = 1

RCODE_OK = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4

OPCODE_QUERY = 0
FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080

HEADER = struct.Struct("!HHHHHH")
MAX_POINTERS = 32  # more jumps than this in one name is a loop


class MessageError(ValueError):
    """The bytes are not a DNS message this codec understands."""


@dataclass(frozen=True)
class Question:
    name: str  # lower case, without the trailing dot
    qtype: int
    qclass: int = CLASS_IN


@dataclass
class Message:
    id: int
    flags: int
    questions: list[Question] = field(default_factory=list)
    answers: list[tuple[str, int, str]] = field(default_factory=list)  # name, ttl, IPv4

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_QR)


def read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The name at offset and the offset after it (following compression pointers)."""
    labels: list[str] = []
    end = -1
    jumps = 0
    while True:
        if offset >= len(data):
            raise MessageError("name runs past the end of the message")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise MessageError("truncated compression pointer")
            jumps += 1
            if jumps > MAX_POINTERS:
                raise MessageError("compression pointer loop")
            if end < 0:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        if length & 0xC0:
            raise MessageError(f"unsupported label type {length >> 6}")
        offset += 1
        if length == 0:
            break
        if offset + length > len(data):
            raise MessageError("label runs past the end of the message")
        labels.append(data[offset : offset + length].decode("ascii", "replace"))
        offset += length
    name = ".".join(labels)
    if len(name) > 253:
        raise MessageError("name longer than 253 characters")
    return name.lower(), (end if end >= 0 else offset)


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        if not label:
            continue
        raw = label.encode("ascii")
        if len(raw) > 63:
            raise MessageError(f"label {label!r} is longer than 63 bytes")
        out += bytes([len(raw)]) + raw
    return bytes(out + b"\x00")


def parse(data: bytes) -> Message:
    """The header and questions of a message."""
    if len(data) < HEADER.size:
        raise MessageError("message shorter than its header")
    ident, flags, qdcount, _an, _ns, _ar = HEADER.unpack_from(data)
    offset = HEADER.size
    questions = []
    for _ in range(qdcount):
        name, offset = read_name(data, offset)
        if offset + 4 > len(data):
            raise MessageError("question runs past the end of the message")
        qtype, qclass = struct.unpack_from("!HH", data, offset)
        offset += 4
        questions.append(Question(name, qtype, qclass))
    return Message(ident, flags, questions)


def encode(message: Message) -> bytes:
    out = bytearray(HEADER.pack(message.id, message.flags, len(message.questions),
                                len(message.answers), 0, 0))  # fmt: skip
    for q in message.questions:
        out += encode_name(q.name) + struct.pack("!HH", q.qtype, q.qclass)
    for name, ttl, address in message.answers:
        rdata = ipaddress.IPv4Address(address).packed
        out += encode_name(name) + struct.pack("!HHIH", TYPE_A, CLASS_IN, ttl, len(rdata))
        out += rdata
    return bytes(out)


def query(ident: int, name: str, qtype: int = TYPE_A) -> bytes:
    """A recursive query for name (for clients and tests)."""
    return encode(Message(ident, FLAG_RD, [Question(name.lower(), qtype)]))


def reply(request: Message, rcode: int, answers: list[tuple[str, int, str]] | None = None) -> bytes:
    """The answer to request: its id, question and RD bit, authoritative, recursion offered."""
    flags = FLAG_QR | FLAG_AA | FLAG_RA | (request.flags & FLAG_RD) | (request.opcode << 11)
    return encode(Message(request.id, flags | rcode, list(request.questions), answers or []))


def answer_addresses(data: bytes) -> tuple[int, list[str]]:
    """The rcode and the A-record addresses of a response (for clients and tests)."""
    message = parse(data)
    _, _, _, ancount, _, _ = HEADER.unpack_from(data)
    offset = HEADER.size
    for _ in message.questions:
        _, offset = read_name(data, offset)
        offset += 4
    addresses = []
    for _ in range(ancount):
        _, offset = read_name(data, offset)
        if offset + 10 > len(data):
            raise MessageError("record runs past the end of the message")
        rtype, _rclass, _ttl, length = struct.unpack_from("!HHIH", data, offset)
        offset += 10
        if offset + length > len(data):
            raise MessageError("record data runs past the end of the message")
        if rtype == TYPE_A and length == 4:
            addresses.append(str(ipaddress.IPv4Address(data[offset : offset + 4])))
        offset += length
    return message.rcode, addresses
