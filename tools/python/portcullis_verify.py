#!/usr/bin/env python3
"""Independent verifier for Portcullis ledger exports, tlog-proof files and report bundles.

Written from ``schemas/FORMAT.md`` alone (plus the RFCs and C2SP specifications it cites),
without reading the Rust reference implementation. It exists to show that the specification is
complete enough to implement independently, and to cross-check the reference on the vectors of
``schemas/testdata/``. Python 3.11, standard library only. Ed25519 verification is implemented
here in pure Python (RFC 8032 section 5.1.7, strict as FORMAT.md section 2.3 requires): it is
slow, but exports in tests are small.

Usage:
    portcullis_verify.py EXPORT_DIR --key VKEY[@FROM-[TO]] [--key ...] [--anchor FILE]
                         [--allow-partial] [--json]
    portcullis_verify.py proof FILE --key VKEY[@FROM-[TO]] [--key ...] [--json]
    portcullis_verify.py report BUNDLE --key VKEY[@FROM-[TO]] [--key ...] [--anchor FILE]
                         [--json]

Exit status: 0 verified, 1 verification failure, 2 usage error (a malformed or weak pinned key
included). With --json the result is ``{"ok": true, "size": N, "entries_verified": N}`` or
``{"ok": false, "check": "<code>", "seq": N|null, "reason": "..."}`` (for a report bundle
also ``"file"``, the bundle file the failure concerns, or null).

A report bundle (FORMAT.md section 12) is checked as in section 12.5, steps 1-6 and 9: every
entry (syntax, seq, origin, chain, timestamps, IDs, signatures by the key in force, rotations),
the checkpoint's and the manifest's signatures, the boundaries, the range proof to the
checkpoint's root, the anchor when given, the manifest's file list and every file's SHA-256. It
does not recompute the populations, the JSON or the HTML (step 8; their definitions are only
checked by name), nor check a witness policy (step 7): a changed CSV, JSON or HTML file fails
here with `file-hash` where the reference reports `csv`, `report-json` or `report-html`.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field


class Fail(Exception):
    """A verification failure: a code of FORMAT.md section 9.1, or a tlog-proof error."""

    def __init__(self, check: str, reason: str, seq: int | None = None,
                 file: str | None = None):
        super().__init__(reason)
        self.check, self.reason, self.seq, self.file = check, reason, seq, file


# ---------------------------------------------------------------------------------------------
# Encodings (section 1)

# Unicode White_Space (PropList.txt), used for key names, origins and key-string trimming.
WHITE_SPACE = "".join(map(chr, [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680,
                                *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]))
DECIMAL = re.compile(r"0|[1-9][0-9]*")


def b64decode(s: str | bytes, length: int | None = None) -> bytes:
    """Strict RFC 4648 base64: canonical padding, alphabet only, zero unused bits."""
    raw = s.encode("ascii") if isinstance(s, str) else s  # UnicodeEncodeError is a ValueError
    out = base64.b64decode(raw, validate=True)
    if base64.b64encode(out) != raw:
        raise ValueError("non-canonical base64")
    if length is not None and len(out) != length:
        raise ValueError(f"base64 value is {len(out)} bytes, not {length}")
    return out


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def decimal(s: str) -> int:
    if not DECIMAL.fullmatch(s) or int(s) >= 2**64:
        raise ValueError(f"bad decimal {s!r}")
    return int(s)


def valid_name(name: str) -> bool:
    """A key name or origin (section 2.1 item 5): non-empty, no White_Space, no '+'."""
    return bool(name) and "+" not in name and not any(c in WHITE_SPACE for c in name)


# ---------------------------------------------------------------------------------------------
# Ed25519 (RFC 8032), extended homogeneous coordinates (X, Y, Z, T)

P = 2**255 - 19
L_ORDER = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1, 1, 0)


def _add(p1, p2):
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a, b = (y1 - x1) * (y2 - x2) % P, (y1 + x1) * (y2 + x2) % P
    c, d = t1 * 2 * D * t2 % P, z1 * 2 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(s: int, pt):
    q = IDENTITY
    while s > 0:
        if s & 1:
            q = _add(q, pt)
        pt, s = _add(pt, pt), s >> 1
    return q


def _recover_x(y: int, sign: int) -> int | None:
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    return P - x if (x & 1) != sign else x


def decode_point(b: bytes, lenient_y: bool = False):
    """RFC 8032 5.1.3. With lenient_y, y >= p is reduced (the reference does so for keys)."""
    y = int.from_bytes(b, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x = _recover_x(y - P if lenient_y and y >= P else y, sign) if len(b) == 32 else None
    return None if x is None else (x, y % P, 1, x * y % P)


def encode_point(pt) -> bytes:
    zi = pow(pt[2], P - 2, P)
    x, y = pt[0] * zi % P, pt[1] * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def small_order(pt) -> bool:
    return encode_point(_mul(8, pt)) == encode_point(IDENTITY)


_BY = 4 * pow(5, P - 2, P) % P
BASE = (_recover_x(_BY, 0), _BY, 1, _recover_x(_BY, 0) * _BY % P)


def ed25519_verify(pub: bytes, a_point, msg: bytes, sig: bytes) -> bool:
    """Strict: 64 bytes, S < L, R decodes and is not of small order, and [S]B - [k]A encodes
    to exactly R's bytes (cofactorless; a non-canonical R is refused)."""
    if len(sig) != 64:
        return False
    r_bytes, s = sig[:32], int.from_bytes(sig[32:], "little")
    r = decode_point(r_bytes)
    if s >= L_ORDER or r is None or small_order(r):
        return False
    k = int.from_bytes(hashlib.sha512(r_bytes + pub + msg).digest(), "little") % L_ORDER
    neg_a = ((-a_point[0]) % P, a_point[1], a_point[2], (-a_point[3]) % P)
    return encode_point(_add(_mul(s, BASE), _mul(k, neg_a))) == r_bytes


# ---------------------------------------------------------------------------------------------
# Keys (sections 2.2, 6.3)

@dataclass(frozen=True)
class Key:
    name: str
    key_id: int
    pub: bytes
    point: tuple = field(compare=False, hash=False, repr=False)

    def __str__(self) -> str:
        return f"{self.name}+{self.key_id:08x}+" + b64(b"\x01" + self.pub)


def key_id(name: str, pub: bytes) -> int:
    return int.from_bytes(hashlib.sha256(name.encode() + b"\n\x01" + pub).digest()[:4], "big")


def parse_vkey(s: str) -> Key:
    """A verifier key string, loaded strictly (weak keys refused); raises ValueError."""
    parts = s.strip(WHITE_SPACE).split("+", 2)
    if len(parts) != 3:
        raise ValueError("verifier key is not <name>+<id>+<key>")
    name, idhex, key64 = parts
    if not valid_name(name):
        raise ValueError(f"invalid key name {name!r}")
    if not re.fullmatch(r"[0-9a-f]{8}", idhex):
        raise ValueError("key ID is not 8 lowercase hex digits")
    raw = b64decode(key64)
    if len(raw) != 33 or raw[0] != 0x01:
        raise ValueError("key is not 0x01 followed by 32 bytes")
    point = decode_point(raw[1:], lenient_y=True)
    if point is None:
        raise ValueError("key is not an Edwards point")
    if small_order(point):
        raise ValueError("weak key (small order)")
    if key_id(name, raw[1:]) != int(idhex, 16):
        raise ValueError("key ID does not match name and key")
    return Key(name, int(idhex, 16), raw[1:], point)


@dataclass(frozen=True)
class Pinned:
    key: Key
    lo: int
    hi: int | None  # exclusive; None: unbounded

    def covers(self, s: int) -> bool:
        return self.lo <= s and (self.hi is None or s < self.hi)


def parse_pinned(s: str) -> Pinned:
    """VKEY, VKEY@FROM- or VKEY@FROM-TO; the range is split off at the last '@'."""
    s = s.strip(WHITE_SPACE)
    if "@" not in s:
        return Pinned(parse_vkey(s), 0, None)
    vkey, rng = s.rsplit("@", 1)
    m = re.fullmatch(r"(0|[1-9][0-9]*)-(0|[1-9][0-9]*)?", rng)
    if not m or (m[2] is not None and int(m[2]) <= int(m[1])):
        raise ValueError(f"bad range {rng!r} (FROM- or FROM-TO with TO > FROM)")
    return Pinned(parse_vkey(vkey), int(m[1]), None if m[2] is None else int(m[2]))


def permitted(key: Key, s: int, pinned: list[Pinned], before: list[Key]) -> bool:
    """Section 6.3. A pinned key: one of its ranges covers s. A key not pinned (it came from a
    verified rotation): every pinned key covering s was in force before it (`before`)."""
    if any(p.key == key for p in pinned):
        return any(p.covers(s) for p in pinned if p.key == key)
    return all(p.key in before for p in pinned if p.covers(s))


def pinned_covering(pinned: list[Pinned], s: int, origin: str) -> list[Key]:
    return list(dict.fromkeys(p.key for p in pinned if p.covers(s) and p.key.name == origin))


# ---------------------------------------------------------------------------------------------
# Signed notes and checkpoints (sections 2.1, 2.3, 7.1)

@dataclass
class SigLine:
    name: str
    key_id: int
    sig: bytes

    def matches(self, key: Key) -> bool:
        return self.name == key.name and self.key_id == key.key_id


def parse_note(b: bytes) -> tuple[bytes, list[SigLine]]:
    b.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if any(c < 0x20 and c != 0x0A for c in b):
        raise ValueError("control byte in note")
    i = b.rfind(b"\n\n")
    if i < 0:
        raise ValueError("note has no blank line")
    text, block = b[:i + 1], b[i + 2:]
    if not block.endswith(b"\n") or not 1 <= block.count(b"\n") <= 64:
        raise ValueError("signature block is empty, unterminated or over 64 lines")
    sigs = []
    for line in block[:-1].decode().split("\n"):
        parts = line[2:].split(" ")
        if not line.startswith("\u2014 ") or len(parts) != 2 or not valid_name(parts[0]):
            raise ValueError("malformed signature line")
        raw = b64decode(parts[1])
        if len(raw) < 5:
            raise ValueError("signature line shorter than 5 bytes")
        sigs.append(SigLine(parts[0], int.from_bytes(raw[:4], "big"), raw[4:]))
    return text, sigs


def verify_line(line: SigLine, key: Key, text: bytes) -> bool:
    return line.matches(key) and ed25519_verify(key.pub, key.point, text, line.sig)


def note_verified(text: bytes, sigs: list[SigLine], keys: list[Key]) -> bool:
    """Signed-note rule: every line matching a trusted key verifies, and at least one does."""
    matching = [(line, k) for line in sigs for k in keys if line.matches(k)]
    return bool(matching) and all(verify_line(line, k, text) for line, k in matching)


@dataclass
class Checkpoint:
    origin: str
    size: int
    root: bytes
    text: bytes
    sigs: list[SigLine]

    def verified_by(self, keys: list[Key]) -> bool:
        return note_verified(self.text, self.sigs, keys)


def parse_checkpoint(b: bytes) -> Checkpoint:
    text, sigs = parse_note(b)
    lines = text.decode().split("\n")
    if len(lines) != 4:
        raise ValueError("checkpoint text is not exactly three lines")
    if not valid_name(lines[0]):
        raise ValueError("invalid origin")
    return Checkpoint(lines[0], decimal(lines[1]), b64decode(lines[2], 32), text, sigs)


# ---------------------------------------------------------------------------------------------
# Canonical JSON (section 3)

MAX_INT = 2**53 - 1
NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)")
HEX4 = re.compile(r"[0-9a-fA-F]{4}")
UNESCAPE = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
ESCAPE = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
          "\r": "\\r"}


class _Parser:
    """Recursive descent over the subset of section 3.1. White space parses here; the canonical
    check refuses it afterwards."""

    def __init__(self, s: str):
        self.s, self.i = s, 0

    def fail(self, why: str):
        raise ValueError(f"JSON: {why} at offset {self.i}")

    def peek(self) -> str:
        while self.s[self.i:self.i + 1] in (" ", "\t", "\n", "\r"):
            self.i += 1
        return self.s[self.i:self.i + 1]

    def value(self, depth: int):
        c, s, i = self.peek(), self.s, self.i
        if c in ("{", "["):
            if depth >= 64:
                self.fail("nesting deeper than 64")
            return self.container(c, depth + 1)
        if c == '"':
            return self.string()
        for lit, val in (("true", True), ("false", False), ("null", None)):
            if s.startswith(lit, i):
                self.i += len(lit)
                return val
        m = NUMBER.match(s, i)
        if not m or abs(int(m.group())) > MAX_INT:
            self.fail("unexpected character or integer out of range")
        self.i = m.end()
        return int(m.group())

    def container(self, c: str, depth: int):
        close, out = ("}", {}) if c == "{" else ("]", [])
        self.i += 1
        if self.peek() == close:
            self.i += 1
            return out
        while True:
            if close == "]":
                out.append(self.value(depth))
            else:
                if self.peek() != '"':
                    self.fail("expected a key")
                k = self.string()
                if k in out:
                    self.fail(f"duplicate key {k!r}")
                if self.peek() != ":":
                    self.fail("expected ':'")
                self.i += 1
                out[k] = self.value(depth)
            c = self.peek()
            self.i += 1
            if c == close:
                return out
            if c != ",":
                self.fail("expected ',' or the end of the container")

    def hex4(self, j: int) -> int:
        if not HEX4.fullmatch(self.s[j:j + 4]):
            self.fail("bad \\u escape")
        return int(self.s[j:j + 4], 16)

    def string(self) -> str:
        s, out = self.s, []
        self.i += 1
        while (c := s[self.i:self.i + 1]) != '"':
            if c == "" or ord(c) < 0x20:
                self.fail("unterminated string or raw control character")
            e = s[self.i + 1:self.i + 2]
            if c != "\\" or (e and e in UNESCAPE):
                out.append(c if c != "\\" else UNESCAPE[e])
                self.i += 1 if c != "\\" else 2
                continue
            if e != "u":
                self.fail("bad escape")
            cp = self.hex4(self.i + 2)
            self.i += 6
            if 0xD800 <= cp <= 0xDBFF:  # must be followed by an escaped low surrogate
                lo = self.hex4(self.i + 2) if s[self.i:self.i + 2] == "\\u" else -1
                if not 0xDC00 <= lo <= 0xDFFF:
                    self.fail("lone high surrogate")
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                self.i += 6
            elif 0xDC00 <= cp <= 0xDFFF:
                self.fail("lone low surrogate")
            out.append(chr(cp))
        self.i += 1
        return "".join(out)


def parse_json(s: str):
    p = _Parser(s)
    v = p.value(0)
    if p.peek() != "":
        p.fail("trailing data")
    return v


def canon_str(s: str) -> str:
    return '"' + "".join(ESCAPE.get(c) or (f"\\u{ord(c):04x}" if c < " " else c)
                         for c in s) + '"'


def canonical(v) -> str:
    """RFC 8785 on the subset: members sorted by UTF-16 code units, no white space."""
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return canon_str(v)
    if isinstance(v, list):
        return "[" + ",".join(map(canonical, v)) + "]"
    keys = sorted(v, key=lambda k: k.encode("utf-16-be"))
    return "{" + ",".join(canon_str(k) + ":" + canonical(v[k]) for k in keys) + "}"


# ---------------------------------------------------------------------------------------------
# Events (section 4)

HEADER = b"portcullis/event/v1\n"
TS = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.[0-9]{6}Z")
KIND = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")


def _is_int(v, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def _subject(v) -> bool:
    """actor.sub and each group: 1 to 256 scalar values, no Cc control character."""
    return isinstance(v, str) and 1 <= len(v) <= 256 and not any(
        c < " " or "\x7f" <= c <= "\x9f" for c in v)


def _timestamp(ts) -> bool:
    m = TS.fullmatch(ts) if isinstance(ts, str) else None
    if not m:
        return False
    y, mo, d, h, mi, s = map(int, m.groups())
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    days = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    return 1970 <= y and 1 <= mo <= 12 and 1 <= d <= days[mo - 1] and h < 24 and mi < 60 and s < 60


def _prev(v) -> bool:
    try:
        return isinstance(v, str) and len(b64decode(v)) == 32
    except ValueError:
        return False


def check_fields(ev) -> None:
    """Section 4.2; raises ValueError naming the first bad field."""
    if not isinstance(ev, dict) or set(ev) != {"actor", "data", "id", "kind", "log", "prev",
                                               "seq", "ts", "v"}:
        raise ValueError("the event does not have exactly the nine members")
    actor = ev["actor"]
    ok_actor = isinstance(actor, dict) and set(actor) == {"groups", "sub", "via"}
    checks = {
        "actor": ok_actor,
        "actor.sub": ok_actor and _subject(actor["sub"]),
        "actor.groups": ok_actor and isinstance(actor["groups"], list)
        and len(actor["groups"]) <= 256 and all(map(_subject, actor["groups"])),
        "actor.via": ok_actor and isinstance(actor["via"], str)
        and re.fullmatch(r"[a-z0-9-]{1,32}", actor["via"]) is not None,
        "data": isinstance(ev["data"], dict),
        "id": isinstance(ev["id"], str) and re.fullmatch(r"[0-9a-f]{32}", ev["id"]) is not None,
        "kind": isinstance(ev["kind"], str) and len(ev["kind"].encode()) <= 64
        and KIND.fullmatch(ev["kind"]) is not None,
        "log": isinstance(ev["log"], str) and len(ev["log"].encode()) <= 255
        and valid_name(ev["log"]),
        "prev": _prev(ev["prev"]),
        "seq": _is_int(ev["seq"], 0, MAX_INT),
        "ts": _timestamp(ev["ts"]),
        "v": _is_int(ev["v"], 1, 65535),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"invalid field {bad[0]}")


@dataclass
class Entry:
    text: bytes
    line: bytes
    event: dict
    sigs: list[SigLine]
    new_key: Key | None


def parse_entry(b: bytes) -> Entry:
    """Section 4.1, rules 1 to 6 in order; raises ValueError."""
    if len(b) > 65535:
        raise ValueError("entry larger than 65535 bytes")
    text, sigs = parse_note(b)
    line = text[len(HEADER):-1]
    if not text.startswith(HEADER) or b"\n" in line:
        raise ValueError("text is not the event header and exactly one line")
    ev = parse_json(line.decode())
    if canonical(ev).encode() != line:
        raise ValueError("event JSON is not canonical")
    check_fields(ev)
    new_key = None
    if ev["kind"] == "key.rotated":  # section 6.2
        if not isinstance(ev["data"].get("new_key"), str):
            raise ValueError("key.rotated without a string data.new_key")
        new_key = parse_vkey(ev["data"]["new_key"])
        if new_key.name != ev["log"]:
            raise ValueError("data.new_key is not named after the log")
    if len(sigs) != (2 if new_key else 1):
        raise ValueError(f"wrong number of signature lines ({len(sigs)})")
    return Entry(text, line, ev, sigs, new_key)


def jsonl_line(e: Entry, leaf: bytes) -> bytes:
    """The entries.jsonl line of section 8.2, with its LF."""
    sigs = ",".join('{"key_id":"%08x","name":%s,"signature":"%s"}'
                    % (s.key_id, canon_str(s.name), b64(s.sig)) for s in e.sigs)
    return (b'{"event":' + e.line + b',"leaf_hash":"' + b64(leaf).encode() + b'","seq":'
            + str(e.event["seq"]).encode() + b',"signatures":[' + sigs.encode() + b"]}\n")


# ---------------------------------------------------------------------------------------------
# Merkle tree (section 5)

def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def mth(leaves: list[bytes], lo: int = 0, hi: int | None = None) -> bytes:
    hi = len(leaves) if hi is None else hi
    if hi - lo <= 1:
        return leaves[lo] if hi > lo else hashlib.sha256(b"").digest()
    k = 1 << ((hi - lo - 1).bit_length() - 1)  # the largest power of two < n
    return node_hash(mth(leaves, lo, lo + k), mth(leaves, lo + k, hi))


def verify_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2, as written in section 5.4."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


# ---------------------------------------------------------------------------------------------
# Export layout (section 8.2)

def index_path(n: int) -> str:
    """0 -> 000, 1000 -> x001/000: groups of three digits, all but the last prefixed 'x'."""
    digits = str(n).zfill(-(-len(str(n)) // 3) * 3)
    groups = [digits[i:i + 3] for i in range(0, len(digits), 3)]
    return "/".join(["x" + g for g in groups[:-1]] + [groups[-1]])


def tile_path(level: int | str, n: int, width: int) -> str:
    return f"tile/{level}/{index_path(n)}" + (f".p/{width}" if width < 256 else "")


def tile_set(n: int):
    """Yields (level, index, width) for every hash tile of a tree of size n."""
    level = 0
    while (h := n // 256**level) > 0:
        yield from ((level, i, 256) for i in range(h // 256))
        if h % 256:
            yield level, h // 256, h % 256
        level += 1


def read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


class Tree:
    """Appends leaf hashes, keeps every level's full nodes, checks each full hash tile as soon
    as an append completes it (section 9 step 5.12) and records the root at the anchor size."""

    def __init__(self, root_dir: str, anchor_size: int | None):
        self.dir, self.levels, self.anchor_size = root_dir, [[]], anchor_size
        self.anchor_root = mth([]) if anchor_size == 0 else None

    def leaves(self) -> list[bytes]:
        return self.levels[0]

    def check_tile(self, level: int, index: int, width: int) -> None:
        path = tile_path(level, index, width)
        data = read(os.path.join(self.dir, path))
        if data is None:
            raise Fail("layout", f"cannot read {path}")
        nodes = self.levels[8 * level] if 8 * level < len(self.levels) else []
        if data != b"".join(nodes[256 * index:256 * index + width]):
            raise Fail("tile", f"{path} differs from the recomputed hashes")

    def append(self, leaf: bytes) -> None:
        self.levels[0].append(leaf)
        changed, lvl = [0], 0
        while len(self.levels[lvl]) % 2 == 0:  # a right child completes its parent
            lvl += 1
            if lvl == len(self.levels):
                self.levels.append([])
            self.levels[lvl].append(node_hash(*self.levels[lvl - 1][-2:]))
            changed.append(lvl)
        for lvl in changed:
            if lvl % 8 == 0 and len(self.levels[lvl]) % 256 == 0:
                self.check_tile(lvl // 8, len(self.levels[lvl]) // 256 - 1, 256)
        if len(self.leaves()) == self.anchor_size:
            self.anchor_root = mth(self.leaves())


# ---------------------------------------------------------------------------------------------
# Export verification (section 9)

def check_layout(export_dir: str, n: int, allow_partial: bool) -> tuple[list, int | None]:
    """Step 3. Returns the bundles (index, width) of size n and the first one present."""
    for level, idx, width in tile_set(n):
        if not os.path.isfile(os.path.join(export_dir, tile_path(level, idx, width))):
            raise Fail("layout", f"missing hash tile {tile_path(level, idx, width)}")
    bundles = [(idx, width) for level, idx, width in tile_set(n) if level == 0]
    present = [os.path.isfile(os.path.join(export_dir, tile_path("entries", i, w)))
               for i, w in bundles]
    first = present.index(True) if True in present else None
    if bundles and first != 0 and not allow_partial:
        raise Fail("entry-missing", "the first entry bundle is absent (not a range export)", 0)
    for k in range(len(bundles) if first is None else first, len(bundles)):
        if not present[k]:
            raise Fail("entry-missing", f"missing {tile_path('entries', *bundles[k])}",
                       256 * bundles[k][0])
    expected = {"checkpoint", "entries.jsonl"} | {tile_path(*t) for t in tile_set(n)}
    expected |= {tile_path("entries", i, w) for i, w in bundles}
    found = []
    for dirpath, _dirs, files in os.walk(export_dir):
        rel = os.path.relpath(dirpath, export_dir).replace(os.sep, "/")
        found += [f if rel == "." else f"{rel}/{f}" for f in files]
    for rel in sorted(found, key=lambda p: p.split("/")):
        if rel not in expected:
            raise Fail("layout", f"unexpected file {rel}")
    return bundles, first


def split_bundle(data: bytes, path: str, start: int, width: int) -> list[bytes]:
    entries, off = [], 0
    while off < len(data):
        length = int.from_bytes(data[off:off + 2], "big")
        if off + 2 + length > len(data):
            raise Fail("entry-syntax", f"a length prefix runs past the end of {path}",
                       start + len(entries))
        entries.append(data[off + 2:off + 2 + length])
        off += 2 + length
    if len(entries) != width:
        raise Fail("entry-missing", f"{path} holds {len(entries)} entries, not {width}",
                   start + min(len(entries), width))
    return entries


def verify_export(export_dir: str, pinned: list[Pinned], anchor: bytes | None = None,
                  allow_partial: bool = False) -> dict:
    # 1. Checkpoint.
    cp_raw = read(os.path.join(export_dir, "checkpoint"))
    if cp_raw is None:
        raise Fail("layout", "cannot read checkpoint")
    try:
        cp = parse_checkpoint(cp_raw)
    except ValueError as e:
        raise Fail("checkpoint", f"malformed checkpoint: {e}") from None
    origin, n = cp.origin, cp.size

    # 2. Anchor, first part.
    an = None
    if anchor is not None:
        try:
            an = parse_checkpoint(anchor)
        except ValueError as e:
            raise Fail("anchor", f"malformed anchor: {e}") from None
        if an.origin != origin:
            raise Fail("anchor", f"the anchor is for log {an.origin!r}, not {origin!r}")
        if an.size > n:
            if not an.verified_by(pinned_covering(pinned, an.size, origin)):
                raise Fail("anchor", f"anchor of size {an.size} not signed by a pinned key")
            raise Fail("truncation", f"anchor size {an.size} exceeds the checkpoint size {n}")

    # 3. Layout; 4. leading leaves of a range export, from the level-0 tiles.
    bundles, first = check_layout(export_dir, n, allow_partial)
    start = len(bundles) if first is None else first
    jsonl = read(os.path.join(export_dir, "entries.jsonl"))
    if jsonl is None:
        raise Fail("layout", "cannot read entries.jsonl")
    tree = Tree(export_dir, an.size if an else None)
    for i, w in bundles[:start]:
        data = read(os.path.join(export_dir, tile_path(0, i, w)))
        if data is None:
            raise Fail("layout", f"cannot read {tile_path(0, i, w)}")
        if len(data) != 32 * w:
            raise Fail("tile", f"{tile_path(0, i, w)} is {len(data)} bytes, not {32 * w}")
        for j in range(w):
            tree.append(data[32 * j:32 * j + 32])

    # 5. Entries, bundle by bundle.
    prev = tree.leaves()[-1] if tree.leaves() else bytes(32)
    prev_ts, ids, key, pos = None, set(), None, 0
    history: list[tuple[int, Key]] = []  # (first seq, key) of each key in force, in order
    ts_range: list[str] = []
    for i, w in bundles[start:]:
        path = tile_path("entries", i, w)
        data = read(os.path.join(export_dir, path))
        if data is None:
            raise Fail("entry-syntax", f"cannot read {path}", 256 * i)
        for s, raw in enumerate(split_bundle(data, path, 256 * i, w), 256 * i):
            try:
                e = parse_entry(raw)
            except ValueError as exc:
                raise Fail("entry-syntax", f"entry {s}: {exc}", s) from None
            ev = e.event
            if ev["seq"] != s:
                raise Fail("sequence", f"the entry at position {s} has seq {ev['seq']}", s)
            if ev["log"] != origin:
                raise Fail("origin", f"entry {s} belongs to log {ev['log']!r}", s)
            if b64decode(ev["prev"]) != prev:
                raise Fail("prev-hash", f"entry {s}: prev is not the preceding leaf hash", s)
            if prev_ts is not None and ev["ts"] < prev_ts:
                raise Fail("timestamp", f"entry {s}: ts {ev['ts']} is before {prev_ts}", s)
            if ev["id"] in ids:
                raise Fail("duplicate-id", f"entry {s}: event ID {ev['id']} repeated", s)
            ids.add(ev["id"])
            if key is None:
                key = next((p.key for p in pinned if p.covers(s) and p.key.name == origin
                            and e.sigs[0].matches(p.key)), None)
                if key is None:
                    raise Fail("key-not-in-force",
                               f"no pinned key covering {s} matches its signature line", s)
                history.append((s, key))
            if not verify_line(e.sigs[0], key, e.text):
                raise Fail("signature", f"entry {s}: signature line 1 is not a valid "
                           f"signature by the key in force ({key.key_id:08x})", s)
            if not permitted(key, s, pinned, [k for _, k in history[:-1]]):
                raise Fail("key-not-in-force", f"key {key.key_id:08x} is not pinned for {s}", s)
            if e.new_key is not None:
                if not verify_line(e.sigs[1], e.new_key, e.text):
                    raise Fail("signature", f"entry {s}: signature line 2 is not a valid "
                               "signature by the new key", s)
                key = e.new_key
                history.append((s + 1, key))
            line = jsonl_line(e, leaf := leaf_hash(raw))
            if jsonl[pos:pos + len(line)] != line:
                raise Fail("jsonl", f"the entries.jsonl line of entry {s} differs", s)
            pos += len(line)
            tree.append(leaf)
            prev, prev_ts = leaf, ev["ts"]
            ts_range = [ts_range[0] if ts_range else prev_ts, prev_ts]

    # 6. Partial tiles; 7. root.
    for level, idx, width in tile_set(n):
        if width < 256:
            tree.check_tile(level, idx, width)
    if mth(tree.leaves()) != cp.root:
        raise Fail("root", "the recomputed root differs from the checkpoint's")
    if pos != len(jsonl):
        raise Fail("jsonl", "entries.jsonl has extra lines")

    def key_in_force(size: int) -> tuple[Key, bool]:
        """The key in force at size (the last one whose first seq is at most size, else the
        first K), and whether it is permitted at size."""
        i = max([j for j, (first_s, _) in enumerate(history) if first_s <= size], default=0)
        k = history[i][1]
        return k, permitted(k, size, pinned, [k2 for _, k2 in history[:i]])

    # 8. Checkpoint signature.
    first_seq = history[0][0] if history else None
    verified = 0 if first_seq is None else n - first_seq  # every entry from first_seq on
    if verified:
        k, ok = key_in_force(n)
        if not (ok and cp.verified_by([k])):
            raise Fail("checkpoint-signature",
                       f"the checkpoint is not signed by the key in force ({k.key_id:08x})")
    elif not cp.verified_by(pinned_covering(pinned, n, origin)):
        raise Fail("checkpoint-signature", f"the checkpoint is not signed by a pinned key "
                   f"covering {n}")

    # 9. Anchor, second part.
    if an is not None:
        a = an.size
        if not verified or a < first_seq:
            keys = pinned_covering(pinned, a, origin)
        else:
            k, ok = key_in_force(a)
            keys = [k] if ok else []
        if not an.verified_by(keys):
            raise Fail("anchor", f"the anchor of size {a} is not signed by a key permitted "
                       "and in force at its size")
        if tree.anchor_root != an.root:
            raise Fail("fork", f"the tree of size {a} differs from the anchor",
                       a - 1 if a else None)

    return {"origin": origin, "size": n, "root": b64(cp.root), "first_seq": first_seq,
            "entries_verified": verified, "timestamps": ts_range,
            "keys_in_force": [(s, str(k)) for s, k in history],
            "anchor_size": an.size if an else None}


# ---------------------------------------------------------------------------------------------
# tlog-proof files (section 8.1)

def verify_proof_file(data: bytes, pinned: list[Pinned]) -> dict:
    """Codes: malformed, checkpoint, checkpoint-signature, no-entry, entry-syntax,
    entry-mismatch, signature, inclusion."""
    try:
        data.decode("utf-8")
        cut = data.index(b"\n\n")
        head, note, extra, pos = data[:cut].decode().split("\n"), data[cut + 2:], None, 1
        if head[0] != "c2sp.org/tlog-proof@v1":
            raise ValueError("not a c2sp.org/tlog-proof@v1 file")
        if len(head) > 1 and head[1].startswith("extra "):
            extra, pos = b64decode(head[1][6:]), 2
        if len(head) <= pos or not head[pos].startswith("index "):
            raise ValueError("missing index line")
        index = decimal(head[pos][6:])
        proof = [b64decode(h, 32) for h in head[pos + 1:]]
    except ValueError as e:
        raise Fail("malformed", f"malformed proof file: {e}") from None
    try:
        cp = parse_checkpoint(note)
    except ValueError as e:
        raise Fail("checkpoint", f"malformed checkpoint: {e}") from None
    if not cp.verified_by(pinned_covering(pinned, cp.size, cp.origin)):
        raise Fail("checkpoint-signature", f"checkpoint not signed by a pinned key covering "
                   f"{cp.size}")
    if extra is None:
        raise Fail("no-entry", "the proof file has no extra line")
    try:
        e = parse_entry(extra)
    except ValueError as exc:
        raise Fail("entry-syntax", f"entry: {exc}") from None
    if e.event["seq"] != index or e.event["log"] != cp.origin:
        raise Fail("entry-mismatch", f"entry seq {e.event['seq']}, log {e.event['log']!r}; "
                   f"file index {index}, origin {cp.origin!r}")
    keys = [k for k in pinned_covering(pinned, index, cp.origin) if e.sigs[0].matches(k)]
    if not keys or not verify_line(e.sigs[0], keys[0], e.text):
        raise Fail("signature", f"signature line 1 does not verify under a pinned key "
                   f"covering {index}")
    if e.new_key is not None and not verify_line(e.sigs[1], e.new_key, e.text):
        raise Fail("signature", "signature line 2 does not verify under the new key")
    if not verify_inclusion(leaf_hash(extra), index, cp.size, proof, cp.root):
        raise Fail("inclusion", f"the inclusion proof of {index} in size {cp.size} fails")
    return {"origin": cp.origin, "size": cp.size, "index": index, "entries_verified": 1}


# ---------------------------------------------------------------------------------------------
# Report bundles (section 12)

MANIFEST_HEADER = "portcullis/report/v1"
PROOF_HEADER = "portcullis/report-proof/v1"
REQUIRED_FILES = ("manifest", "checkpoint", "entries", "proof")
REPORT_FILES = ("checkpoint", "entries", "proof", "report.html", "report.json")
# Section 12.4, in report order.
POPULATIONS = ("access_requests", "approvals", "grants", "grant_endings", "removals",
               "extensions", "break_glass", "cluster_findings", "route_changes",
               "policy_changes", "key_rotations")
HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Manifest:
    origin: str
    report: str
    period: tuple[str, str]
    revoke_sla_ms: int
    entries: tuple[int, int]
    checkpoint_size: int
    anchor_size: int | None
    files: list[tuple[str, str]]  # (sha256 hex, path)
    populations: list[tuple[str, str]]  # (name, definition)


def _field(lines: list[str], i: int, key: str) -> str:
    if i >= len(lines) or not lines[i].startswith(key + " "):
        raise ValueError(f"line {i + 1}: expected `{key} ...`")
    return lines[i][len(key) + 1:]


def parse_manifest(text: bytes) -> Manifest:
    """Section 12.2: the manifest's note text; raises ValueError naming the line."""
    lines = text.decode()[:-1].split("\n")  # a note text always ends in a newline
    if lines[0] != MANIFEST_HEADER:
        raise ValueError(f"line 1: the header is not {MANIFEST_HEADER}")
    nums = {}
    for i, key in ((5, "revoke_sla_ms"), (7, "checkpoint")):
        try:
            nums[key] = decimal(_field(lines, i, key))
        except ValueError as e:
            raise ValueError(f"line {i + 1}: {e}") from None
    rng = _field(lines, 6, "entries").split(" ")
    try:
        first, end = (decimal(rng[0]), decimal(rng[1])) if len(rng) == 2 else (None, None)
    except ValueError:
        first = end = None
    if first is None or end is None:
        raise ValueError("line 7: expected `entries FIRST END`")
    if end <= first:
        raise ValueError("line 7: the entry range is empty")
    anchor = _field(lines, 8, "anchor")
    try:
        anchor_size = None if anchor == "none" else decimal(anchor)
    except ValueError:
        raise ValueError("line 9: expected `anchor N` or `anchor none`") from None
    files, pops = [], []
    for i, line in enumerate(lines[9:], 10):
        kind, _, rest = line.partition(" ")
        a, sep, b = rest.partition(" ")
        if kind == "file" and sep and not pops:
            if not HEX64.fullmatch(a):
                raise ValueError(f"line {i}: the hash is not 64 lowercase hex digits")
            files.append((a, b))
        elif kind == "population" and sep:
            pops.append((a, b))
        else:
            raise ValueError(f"line {i}: expected `file SHA256 PATH` lines, then "
                             "`population NAME DEFINITION` lines")
    paths = [p.encode() for _, p in files]
    if any(x >= y for x, y in zip(paths, paths[1:])):
        raise ValueError("the file lines are not sorted by path (byte order) without repeats")
    return Manifest(_field(lines, 1, "origin"), _field(lines, 2, "report"),
                    (_field(lines, 3, "from"), _field(lines, 4, "to")), nums["revoke_sla_ms"],
                    (first, end), nums["checkpoint"], anchor_size, files, pops)


@dataclass
class RangeProofFile:
    start: int
    end: int
    size: int
    left: list[bytes]
    right: list[bytes]
    anchor: tuple[int, list[bytes]] | None


def parse_range_proof(data: bytes) -> RangeProofFile:
    """Section 12.3; raises ValueError naming the line."""
    text = data.decode("utf-8")
    if not text.endswith("\n"):
        raise ValueError("the proof does not end in a newline")
    lines = text[:-1].split("\n")
    if lines[0] != PROOF_HEADER:
        raise ValueError(f"line 1: the header is not {PROOF_HEADER}")
    nums = []
    for i, key in ((1, "start"), (2, "end"), (3, "size")):
        try:
            nums.append(decimal(_field(lines, i, key)))
        except ValueError:
            raise ValueError(f"line {i + 1}: expected `{key} N`") from None
    left, right, anchor = [], [], None
    for i, line in enumerate(lines[4:], 5):
        key, sep, value = line.partition(" ")
        try:
            if key == "left" and sep and not right and anchor is None:
                left.append(b64decode(value, 32))
            elif key == "right" and sep and anchor is None:
                right.append(b64decode(value, 32))
            elif key == "anchor-size" and sep and anchor is None:
                anchor = (decimal(value), [])
            elif key == "anchor" and sep and anchor is not None:
                anchor[1].append(b64decode(value, 32))
            else:
                raise ValueError("unexpected line here (left, right, anchor-size, anchor lines "
                                 "come in that order)")
        except ValueError as e:
            raise ValueError(f"line {i}: {e}") from None
    return RangeProofFile(*nums, left, right, anchor)


def verify_consistency(old: int, new: int, proof: list[bytes], old_root: bytes,
                       new_root: bytes) -> bool:
    """RFC 9162 section 2.1.4.2 with the edge cases of section 5.5."""
    if old > new or (old == 0 and new > 0):
        return False
    if old == new:
        return not proof and old_root == new_root
    if not proof:
        return False
    path = ([old_root] if old & (old - 1) == 0 else []) + proof
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == new_root


def range_root(start: int, left: list[bytes], leaves: list[bytes]) -> bytes:
    """The root of the tree of start + len(leaves) leaves, from the roots of the perfect
    subtrees of the tree of `start` leaves (largest first) and the following leaf hashes."""
    heights = [h for h in range(63, -1, -1) if start >> h & 1]
    if len(heights) != len(left):
        raise ValueError(f"a tree of {start} leaves has {len(heights)} left hashes, the proof "
                         f"gives {len(left)}")
    stack = list(zip(heights, left))
    for leaf in leaves:
        h, v = 0, leaf
        while stack and stack[-1][0] == h:
            v, h = node_hash(stack.pop()[1], v), h + 1
        stack.append((h, v))
    root = stack[-1][1]
    for _, v in reversed(stack[:-1]):
        root = node_hash(v, root)
    return root


def bundle_files(bundle_dir: str) -> list[str]:
    """Every file under the bundle, relative with '/', sorted; anything that is neither a
    directory nor a regular file (a symbolic link included) fails with `layout`."""
    found, stack = [], [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(bundle_dir, rel)) as it:
            for d in it:
                path = f"{rel}/{d.name}" if rel else d.name
                if d.is_dir(follow_symlinks=False):
                    stack.append(path)
                elif d.is_file(follow_symlinks=False):
                    found.append(path)
                else:
                    raise Fail("layout", "neither a regular file nor a directory", file=path)
    return sorted(found, key=str.encode)


def walk_bundle_entries(entries: list[bytes], origin: str, pinned: list[Pinned]):
    """Section 12.5 step 2: section 9 step 5 items 1-10 over a run of entries starting at the
    first entry's seq. Returns (events, leaf hashes, key history [(first seq, key)])."""
    events, leaves, history, ids = [], [], [], set()
    for i, raw in enumerate(entries):
        s = events[0]["seq"] + i if events else None
        try:
            e = parse_entry(raw)
        except ValueError as exc:
            raise Fail("entry-syntax", f"entry {i} of the file: {exc}", s, "entries") from None
        ev = e.event
        s = ev["seq"] if s is None else s
        if ev["seq"] != s:
            raise Fail("sequence", f"entry {i} of the file has seq {ev['seq']}, expected {s}", s,
                       "entries")
        if ev["log"] != origin:
            raise Fail("origin", f"entry {s} belongs to log {ev['log']!r}, not {origin!r}", s,
                       "entries")
        prev = leaves[-1] if leaves else (bytes(32) if s == 0 else None)
        if prev is not None and b64decode(ev["prev"]) != prev:
            raise Fail("prev-hash", f"entry {s}: prev is not the preceding leaf hash", s,
                       "entries")
        if events and ev["ts"] < events[-1]["ts"]:
            raise Fail("timestamp", f"entry {s}: ts {ev['ts']} is before {events[-1]['ts']}", s,
                       "entries")
        if ev["id"] in ids:
            raise Fail("duplicate-id", f"entry {s}: event ID {ev['id']} repeated", s, "entries")
        ids.add(ev["id"])
        if not history:
            key = next((p.key for p in pinned if p.covers(s) and p.key.name == origin
                        and e.sigs[0].matches(p.key)), None)
            if key is None:
                raise Fail("key-not-in-force",
                           f"no pinned key covering {s} matches its signature line", s, "entries")
            history.append((s, key))
        key = history[-1][1]
        if not verify_line(e.sigs[0], key, e.text):
            raise Fail("signature", f"entry {s}: signature line 1 is not a valid signature by "
                       f"the key in force ({key.key_id:08x})", s, "entries")
        if not permitted(key, s, pinned, [k for _, k in history[:-1]]):
            raise Fail("key-not-in-force", f"key {key.key_id:08x} is not pinned for {s}", s,
                       "entries")
        if e.new_key is not None:
            if not verify_line(e.sigs[1], e.new_key, e.text):
                raise Fail("signature", f"entry {s}: signature line 2 is not a valid signature "
                           "by the new key", s, "entries")
            history.append((s + 1, e.new_key))
        events.append(ev)
        leaves.append(leaf_hash(raw))
    return events, leaves, history


def verify_report(bundle_dir: str, pinned: list[Pinned], anchor: bytes | None = None) -> dict:
    """Section 12.5, steps 1-6 and 9 (not 7, the witness policy, nor 8, the recomputation of
    the populations: a changed CSV, JSON or HTML fails here with `file-hash`)."""
    # 1. The fixed files; the checkpoint and the manifest parse.
    raw = {}
    for name in REQUIRED_FILES:
        raw[name] = read(os.path.join(bundle_dir, name))
        if raw[name] is None:
            raise Fail("layout", "cannot read the file", file=name)
    try:
        cp = parse_checkpoint(raw["checkpoint"])
    except ValueError as e:
        raise Fail("checkpoint", f"malformed checkpoint: {e}", file="checkpoint") from None
    origin, size = cp.origin, cp.size
    try:
        m_text, m_sigs = parse_note(raw["manifest"])
        manifest = parse_manifest(m_text)
    except ValueError as e:
        raise Fail("manifest", f"malformed manifest: {e}", file="manifest") from None

    # 2. Every entry.
    entries, data, off = [], raw["entries"], 0
    while off < len(data):
        length = int.from_bytes(data[off:off + 2], "big")
        if off + 2 > len(data) or off + 2 + length > len(data):
            raise Fail("entry-syntax", f"entry {len(entries)} of the file runs past its end",
                       file="entries")
        entries.append(data[off + 2:off + 2 + length])
        off += 2 + length
    if not entries:
        raise Fail("boundary", "the bundle holds no entries", file="entries")
    events, leaves, history = walk_bundle_entries(entries, origin, pinned)
    first_seq = events[0]["seq"]
    end_seq = first_seq + len(events)

    # 3. The checkpoint, then the manifest, signed by the key in force at the checkpoint's size.
    signer = None
    at = [j for j, (s, _) in enumerate(history) if s <= size]
    if at:
        k = history[at[-1]][1]
        if cp.verified_by([k]) and permitted(k, size, pinned, [k2 for _, k2 in history[:at[-1]]]):
            signer = k
    if signer is None:
        signer = next((k for k in pinned_covering(pinned, size, origin) if cp.verified_by([k])),
                      None)
    if signer is None:
        raise Fail("checkpoint-signature", f"the checkpoint of size {size} is not signed by the "
                   "key in force at its size", file="checkpoint")
    if not note_verified(m_text, m_sigs, [signer]):
        raise Fail("manifest-signature", f"the manifest is not signed by the log key "
                   f"{signer.key_id:08x} that signed the checkpoint", file="manifest")
    if manifest.origin != origin or manifest.report != "soc2":
        raise Fail("manifest", f"the manifest is for log {manifest.origin!r} report "
                   f"{manifest.report!r}; the checkpoint is for {origin!r}", file="manifest")
    frm, to = manifest.period
    if not (_timestamp(frm) and _timestamp(to)):
        raise Fail("manifest", "from or to is not a timestamp of section 4.2", file="manifest")
    if frm >= to:
        raise Fail("manifest", f"the period {frm} .. {to} is empty", file="manifest")

    # 4. Boundaries: one entry before the period (unless the first is entry 0), one at or after
    # its end (unless the last is the checkpoint's last).
    n = len(events)
    p_first = next((i for i, ev in enumerate(events) if ev["ts"] >= frm), n)
    p_end = next((i for i, ev in enumerate(events) if ev["ts"] >= to), n)
    if p_first == 0 and first_seq != 0:
        raise Fail("boundary", f"the first entry ({events[0]['ts']}) is inside the period and "
                   "is not entry 0: the boundary entry before the period is missing",
                   first_seq, "entries")
    if p_first > 1:
        raise Fail("boundary", "more than one entry before the period", first_seq, "entries")
    if p_end == n and end_seq != size:
        raise Fail("boundary", f"the last entry ({events[-1]['ts']}) is inside the period and "
                   "the checkpoint has later entries: the boundary entry after the period is "
                   "missing", end_seq - 1, "entries")
    if p_end + 1 < n:
        raise Fail("boundary", "more than one entry after the period", first_seq + p_end + 1,
                   "entries")

    # 5. The range proof ties the entries to the checkpoint; the manifest names them.
    try:
        proof = parse_range_proof(raw["proof"])
    except ValueError as e:
        raise Fail("proof", f"malformed proof: {e}", file="proof") from None
    if proof.start != first_seq or proof.size != size:
        raise Fail("proof", f"the proof is for entries from {proof.start} in a tree of size "
                   f"{proof.size}; the bundle's entries start at {first_seq} and its checkpoint "
                   f"has size {size}", file="proof")
    if proof.end != end_seq or end_seq > size:
        raise Fail("proof", f"the proof is for entries {proof.start}..{proof.end} of a tree of "
                   f"size {size}; the bundle holds {first_seq}..{end_seq}", file="proof")
    try:
        end_root = range_root(first_seq, proof.left, leaves)
    except ValueError as e:
        raise Fail("proof", str(e), file="proof") from None
    if not verify_consistency(end_seq, size, proof.right, end_root, cp.root):
        raise Fail("proof", f"the entries do not lead to the checkpoint's root (the tree of "
                   f"{end_seq} leaves is not consistent with the checkpoint)", file="proof")
    if (manifest.entries, manifest.checkpoint_size) != ((first_seq, end_seq), size):
        raise Fail("manifest", f"the manifest names entries {manifest.entries[0]}.."
                   f"{manifest.entries[1]} and checkpoint size {manifest.checkpoint_size}; the "
                   f"bundle holds {first_seq}..{end_seq} and size {size}", file="manifest")
    if manifest.anchor_size != (proof.anchor[0] if proof.anchor else None):
        raise Fail("manifest", "the manifest's anchor size differs from the proof's",
                   file="manifest")

    # 6. The auditor's anchor.
    if anchor is not None:
        try:
            an = parse_checkpoint(anchor)
        except ValueError as e:
            raise Fail("anchor", f"malformed anchor: {e}", file="anchor") from None
        if an.origin != origin:
            raise Fail("anchor", f"the anchor is for log {an.origin!r}", file="anchor")
        if not an.verified_by(pinned_covering(pinned, an.size, origin)):
            raise Fail("anchor", f"the anchor of size {an.size} is not signed by a key pinned "
                       "for its size", file="anchor")
        if an.size > size:
            raise Fail("truncation", f"the checkpoint has size {size}, smaller than the "
                       f"anchor's {an.size}", file="checkpoint")
        if an.size == size:
            consistent = an.root == cp.root
        elif proof.anchor is None or proof.anchor[0] != an.size:
            raise Fail("anchor", f"the bundle carries no consistency proof from size {an.size}",
                       file="proof")
        else:
            consistent = verify_consistency(an.size, size, proof.anchor[1], an.root, cp.root)
        if not consistent:
            raise Fail("fork", f"the checkpoint of size {size} is not consistent with the "
                       f"anchor of size {an.size}", max(an.size - 1, 0), "proof")

    # 8 (partly). Without recomputing, the population names must be those of section 12.4.
    names = tuple(name for name, _ in manifest.populations)
    if names != POPULATIONS:
        raise Fail("manifest", f"the populations are {', '.join(names)}, not those of "
                   "FORMAT.md section 12.4", file="manifest")

    # 9. The manifest lists exactly the bundle's files, each with its SHA-256; no other file.
    expected = sorted([*REPORT_FILES, *(f"populations/{p}.csv" for p in POPULATIONS)],
                      key=str.encode)
    if [p for _, p in manifest.files] != expected:
        raise Fail("manifest", "the manifest does not list exactly the bundle's files",
                   file="manifest")
    for digest, path in manifest.files:
        if (content := read(os.path.join(bundle_dir, path))) is None:
            raise Fail("layout", "cannot read the file", file=path)
        if hashlib.sha256(content).hexdigest() != digest:
            raise Fail("file-hash", "SHA-256 differs from the manifest's", file=path)
    for path in bundle_files(bundle_dir):
        if path != "manifest" and path not in expected:
            raise Fail("layout", "a file the manifest does not list", file=path)

    return {"origin": origin, "period": [frm, to], "entries": [first_seq, end_seq],
            "period_closed": p_end < n, "size": size, "root": b64(cp.root),
            "entries_verified": n, "keys_in_force": [(s, str(k)) for s, k in history],
            "anchor_size": None if anchor is None else an.size, "files": len(expected) + 1,
            "manifest_sha256": hashlib.sha256(raw["manifest"]).hexdigest()}


# ---------------------------------------------------------------------------------------------
# Command line

class _ArgParser(argparse.ArgumentParser):
    json_mode = False

    def error(self, message):
        if self.json_mode:
            print(json.dumps({"ok": False, "check": "usage", "seq": None, "reason": message}))
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = _ArgParser(prog="portcullis_verify.py", description="Verify a Portcullis export "
                    "(EXPORT_DIR), a tlog-proof file (proof FILE) or a report bundle "
                    "(report BUNDLE), from FORMAT.md.")
    ap.json_mode = "--json" in argv
    ap.add_argument("target", nargs="+", help="EXPORT_DIR, or: proof FILE, or: report BUNDLE")
    ap.add_argument("--key", action="append", default=[], metavar="VKEY[@FROM-[TO]]")
    ap.add_argument("--anchor", metavar="FILE")
    ap.add_argument("--allow-partial", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    mode = args.target[0] if len(args.target) == 2 else None
    if len(args.target) != 1 and mode not in ("proof", "report"):
        ap.error("expected EXPORT_DIR, or: proof FILE, or: report BUNDLE")
    if mode == "proof" and (args.anchor or args.allow_partial):
        ap.error("--anchor and --allow-partial apply to exports and reports only")
    if mode == "report" and args.allow_partial:
        ap.error("--allow-partial applies to exports only")
    if mode == "report" and not os.path.isdir(args.target[1]):
        ap.error(f"{args.target[1]} is not a directory")
    if not args.key:
        ap.error("at least one --key is required")
    pinned = []
    for k in args.key:
        try:
            pinned.append(parse_pinned(k))
        except ValueError as e:
            ap.error(f"refusing pinned key {k!r}: {e}")
    try:
        if mode == "proof":
            if (data := read(args.target[1])) is None:
                ap.error(f"cannot read {args.target[1]}")
            report = verify_proof_file(data, pinned)
        else:
            anchor = None if args.anchor is None else read(args.anchor)
            if args.anchor is not None and anchor is None:
                raise Fail("anchor", f"cannot read the anchor {args.anchor}")
            if mode == "report":
                report = verify_report(args.target[1], pinned, anchor)
            else:
                report = verify_export(args.target[0], pinned, anchor, args.allow_partial)
    except Fail as f:
        if args.json:
            print(json.dumps({"ok": False, "check": f.check, "seq": f.seq, "reason": f.reason}
                             | ({"file": f.file} if mode == "report" else {})))
        else:
            print(f"FAILED [{f.check}]" + (f" {f.file}:" if f.file else "")
                  + (f" at seq {f.seq}" if f.seq is not None else "") + f": {f.reason}")
        return 1
    if args.json:
        print(json.dumps({"ok": True, "size": report["size"],
                          "entries_verified": report["entries_verified"]}))
    else:
        print("OK\n" + "\n".join(f"  {k}: {v}" for k, v in report.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
