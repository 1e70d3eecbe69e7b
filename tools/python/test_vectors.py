#!/usr/bin/env python3
"""Checks the independent verifier (portcullis_verify.py, written from FORMAT.md alone) against
the known-answer vectors of schemas/testdata/ and the worked examples of schemas/FORMAT.md.

Run from anywhere: ``python3 tools/python/test_vectors.py``. Standard library only; exits
non-zero on any mismatch.
"""
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, str(HERE))
import portcullis_verify as pv  # noqa: E402

VERIFIER = HERE / "portcullis_verify.py"
TESTDATA = HERE.parent.parent / "schemas" / "testdata"
PINNED = [line for line in (TESTDATA / "keys" / "pinned.txt").read_text().splitlines() if line]
LOG_KEY = (TESTDATA / "keys" / "log.vkey").read_text().strip()
ROTATED_KEY = (TESTDATA / "keys" / "rotated.vkey").read_text().strip()


def run(*args: str, keys=None) -> tuple[int, dict | None, str]:
    """Runs the verifier CLI with --json; returns (exit code, parsed JSON, stderr)."""
    cmd = [sys.executable, str(VERIFIER), *args, "--json"]
    for k in PINNED if keys is None else keys:
        cmd += ["--key", k]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    try:
        out = json.loads(p.stdout)
    except ValueError:
        out = None
    return p.returncode, out, p.stderr


def verify_consistency(old, new, proof, old_root, new_root) -> bool:
    """RFC 9162 2.1.4.2 with the edge cases of FORMAT.md section 5.5 (not needed by exports)."""
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
            fr, sr = pv.node_hash(c, fr), pv.node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = pv.node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == new_root


def _secret(seed: bytes) -> int:
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] = (h[31] & 127) | 64
    return int.from_bytes(h, "little")


def public_key(seed: bytes) -> bytes:
    """RFC 8032 5.1.5, to check the example key of FORMAT.md section 2.2."""
    return pv.encode_point(pv._mul(_secret(seed), pv.BASE))


def sign(seed: bytes, msg: bytes) -> bytes:
    """RFC 8032 5.1.6, for the synthetic ledgers below (test-only seeds)."""
    a, pub = _secret(seed), public_key(seed)
    r = int.from_bytes(hashlib.sha512(hashlib.sha512(seed).digest()[32:] + msg).digest(),
                       "little") % pv.L_ORDER
    big_r = pv.encode_point(pv._mul(r, pv.BASE))
    k = int.from_bytes(hashlib.sha512(big_r + pub + msg).digest(), "little") % pv.L_ORDER
    return big_r + ((r + k * a) % pv.L_ORDER).to_bytes(32, "little")


def vkey(name: str, seed: bytes) -> str:
    pub = public_key(seed)
    return f"{name}+{pv.key_id(name, pub):08x}+" + pv.b64(b"\x01" + pub)


def signed_note(text: bytes, name: str, seeds: list[bytes]) -> bytes:
    lines = b""
    for seed in seeds:
        kid = pv.key_id(name, public_key(seed)).to_bytes(4, "big")
        lines += f"\u2014 {name} ".encode() + pv.b64(kid + sign(seed, text)).encode() + b"\n"
    return text + b"\n" + lines


def synthetic_ledger(n: int, log: str, seeds: list[bytes], rotate_at: dict[int, int],
                     edit=lambda s, ev: ev) -> list[bytes]:
    """n entries; rotate_at maps a seq to the index in seeds of the key it rotates to."""
    entries, prev, current = [], bytes(32), 0
    for s in range(n):
        ev = {"actor": {"groups": [], "sub": "system:portcullis", "via": "system"},
              "data": {}, "id": f"{s:032x}", "kind": "test.event", "log": log,
              "prev": pv.b64(prev), "seq": s, "ts": f"2026-11-28T10:{s // 60 % 60:02d}:"
              f"{s % 60:02d}.000000Z", "v": 1}
        signers = [seeds[current]]
        if s in rotate_at:
            ev["kind"], current = "key.rotated", rotate_at[s]
            ev["data"] = {"new_key": vkey(log, seeds[current])}
            signers.append(seeds[current])
        ev = edit(s, ev)
        text = b"portcullis/event/v1\n" + pv.canonical(ev).encode() + b"\n"
        entries.append(signed_note(text, log, signers))
        prev = pv.leaf_hash(entries[-1])
    return entries


def jsonl_of(entry: bytes, leaf: bytes, seq: int) -> bytes:
    """The entries.jsonl line of section 8.2, built without the verifier's parser."""
    head, block = entry.split(b"\n\n")
    sigs = []
    for line in block.decode().splitlines():
        _dash, name, sig64 = line.split(" ")
        raw = base64.b64decode(sig64)
        sigs.append({"key_id": raw[:4].hex(), "name": name, "signature": pv.b64(raw[4:])})
    rest = json.dumps({"leaf_hash": pv.b64(leaf), "seq": seq, "signatures": sigs},
                      separators=(",", ":"), ensure_ascii=False)
    return b'{"event":' + head.split(b"\n")[1] + b"," + rest[1:].encode() + b"\n"


def write_export(out: Path, entries: list[bytes], log: str, cp_seed: bytes, start: int = 0):
    """Writes the tlog-tiles export of FORMAT.md section 8.2, keeping entries from `start`."""
    leaves, n = [pv.leaf_hash(e) for e in entries], len(entries)
    for level, idx, width in pv.tile_set(n):
        span = 256**level
        nodes = [pv.mth(leaves, i * span, (i + 1) * span)
                 for i in range(256 * idx, 256 * idx + width)]
        path = out / pv.tile_path(level, idx, width)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(nodes))
        if level == 0 and 256 * idx >= start:
            path = out / pv.tile_path("entries", idx, width)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"".join(len(e).to_bytes(2, "big") + e
                                      for e in entries[256 * idx:256 * idx + width]))
    (out / "entries.jsonl").write_bytes(b"".join(
        jsonl_of(e, leaves[s], s) for s, e in enumerate(entries) if s >= start))
    text = f"{log}\n{n}\n{pv.b64(pv.mth(leaves))}\n".encode()
    (out / "checkpoint").write_bytes(signed_note(text, log, [cp_seed]))


class VerdictsTest(unittest.TestCase):
    """Every vector of verdicts.json gets the expected verdict, code and seq."""

    def test_verdicts(self):
        verdicts = json.loads((TESTDATA / "verdicts.json").read_text())
        self.assertGreater(len(verdicts), 20)
        for name, want in verdicts.items():
            with self.subTest(vector=name):
                path = str(TESTDATA / name)
                if name.endswith(".tlog-proof"):
                    args = ["proof", path]
                else:
                    args = [path] + (["--anchor", str(TESTDATA / want["anchor"])]
                                     if "anchor" in want else [])
                code, out, err = run(*args)
                self.assertIsNotNone(out, f"no JSON output; stderr: {err}")
                self.assertEqual(out["ok"], want["valid"], out)
                self.assertEqual(code, 0 if want["valid"] else 1, out)
                if not want["valid"]:
                    self.assertEqual(out["check"], want["check"], out)
                    self.assertEqual(out["seq"], want.get("seq"), out)

    def test_every_vector_is_listed(self):
        verdicts = json.loads((TESTDATA / "verdicts.json").read_text())
        on_disk = {"export"} | {p.name for p in TESTDATA.glob("*.tlog-proof")}
        on_disk |= {f"tampered/{p.name}" for p in (TESTDATA / "tampered").iterdir()}
        on_disk |= {f"tampered-proofs/{p.name}" for p in (TESTDATA / "tampered-proofs").iterdir()}
        self.assertEqual(on_disk, set(verdicts))


class HonestLedgerTest(unittest.TestCase):
    def test_honest_export(self):
        self.assertEqual(run(str(TESTDATA / "export")),
                         (0, {"ok": True, "size": 7, "entries_verified": 7}, ""))

    def test_honest_export_against_anchors(self):
        for anchor in ("checkpoint-3", "checkpoint-7"):
            with self.subTest(anchor=anchor):
                code, out, _ = run(str(TESTDATA / "export"), "--anchor", str(TESTDATA / anchor))
                self.assertEqual((code, out["ok"]), (0, True), out)

    def test_entries_chain_and_roots(self):
        entries = [(TESTDATA / "entries" / f"{s}.entry").read_bytes() for s in range(7)]
        prev = bytes(32)
        for s, raw in enumerate(entries):
            e = pv.parse_entry(raw)
            self.assertEqual((e.event["seq"], pv.b64decode(e.event["prev"])), (s, prev))
            prev = pv.leaf_hash(raw)
        bundle = (TESTDATA / "export" / "tile" / "entries" / "000.p" / "7").read_bytes()
        self.assertEqual(bundle, b"".join(len(r).to_bytes(2, "big") + r for r in entries))
        leaves = [pv.leaf_hash(r) for r in entries]
        tile = (TESTDATA / "export" / "tile" / "0" / "000.p" / "7").read_bytes()
        self.assertEqual(tile, b"".join(leaves))
        cp3 = pv.parse_checkpoint((TESTDATA / "checkpoint-3").read_bytes())
        cp7 = pv.parse_checkpoint((TESTDATA / "checkpoint-7").read_bytes())
        self.assertEqual(pv.mth(leaves[:3]), cp3.root)
        self.assertEqual(pv.mth(leaves), cp7.root)
        log, rotated = pv.parse_vkey(LOG_KEY), pv.parse_vkey(ROTATED_KEY)
        self.assertTrue(cp3.verified_by([log]) and not cp3.verified_by([rotated]))
        self.assertTrue(cp7.verified_by([rotated]) and not cp7.verified_by([log]))
        self.assertEqual(pv.parse_entry(entries[5]).new_key, rotated)

    def test_consistency_proof(self):
        lines = (TESTDATA / "consistency-3-7.txt").read_text().splitlines()
        old, new, proof = int(lines[0]), int(lines[1]), [pv.b64decode(x, 32) for x in lines[2:]]
        r3 = pv.parse_checkpoint((TESTDATA / "checkpoint-3").read_bytes()).root
        r7 = pv.parse_checkpoint((TESTDATA / "checkpoint-7").read_bytes()).root
        self.assertTrue(verify_consistency(old, new, proof, r3, r7))
        self.assertFalse(verify_consistency(old, new, proof[:-1], r3, r7))
        self.assertFalse(verify_consistency(old, new, proof, r7, r7))


class MutatedExportTest(unittest.TestCase):
    """Attacks applied here to a copy of the honest export."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.dir = Path(self.tmp) / "export"
        shutil.copytree(TESTDATA / "export", self.dir)

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def verdict(self, *extra, keys=None):
        code, out, err = run(str(self.dir), *extra, keys=keys)
        self.assertIsNotNone(out, err)
        return code, out["ok"], out.get("check"), out.get("seq")

    def test_unexpected_file(self):
        (self.dir / "tile" / "0" / "001").write_bytes(b"")
        self.assertEqual(self.verdict(), (1, False, "layout", None))

    def test_missing_files(self):
        for rel, want in (("entries.jsonl", ("layout", None)), ("checkpoint", ("layout", None)),
                          ("tile/0/000.p/7", ("layout", None)),
                          ("tile/entries/000.p/7", ("entry-missing", 0))):
            with self.subTest(missing=rel):
                shutil.rmtree(self.dir)
                shutil.copytree(TESTDATA / "export", self.dir)
                (self.dir / rel).unlink()
                self.assertEqual(self.verdict()[2:], want)

    def test_range_export_without_bundles(self):
        (self.dir / "tile" / "entries" / "000.p" / "7").unlink()
        (self.dir / "entries.jsonl").write_bytes(b"")
        self.assertEqual(self.verdict("--allow-partial")[:2], (0, True))
        self.assertEqual(self.verdict("--allow-partial", "--anchor",
                                      str(TESTDATA / "checkpoint-3"))[:2], (0, True))

    def test_tile_and_jsonl_edits(self):
        tile = self.dir / "tile" / "0" / "000.p" / "7"
        tile.write_bytes(tile.read_bytes()[:-1] + b"\x00")
        self.assertEqual(self.verdict()[2:], ("tile", None))
        tile.write_bytes((TESTDATA / "export" / "tile" / "0" / "000.p" / "7").read_bytes())
        jsonl = self.dir / "entries.jsonl"
        original = jsonl.read_bytes()
        jsonl.write_bytes(original + original.splitlines(keepends=True)[-1])
        self.assertEqual(self.verdict()[2:], ("jsonl", None))
        jsonl.write_bytes(original.replace(b'"seq":3,"ts"', b'"seq":3, "ts"'))
        self.assertEqual(self.verdict()[2:], ("jsonl", 3))
        jsonl.write_bytes(original[:-1])
        self.assertEqual(self.verdict()[2:], ("jsonl", 6))

    def test_pinned_ranges(self):
        self.assertEqual(self.verdict(keys=[LOG_KEY + "@0-5", ROTATED_KEY + "@6-"])[2:],
                         ("key-not-in-force", 5))
        # A key learnt from a verified rotation and not pinned is permitted everywhere.
        self.assertEqual(self.verdict(keys=[LOG_KEY])[:2], (0, True))
        self.assertEqual(self.verdict(keys=[ROTATED_KEY])[2:], ("key-not-in-force", 0))
        # The rotated key pinned only from 8 on: it may not sign the checkpoint of size 7.
        self.assertEqual(self.verdict(keys=[LOG_KEY, ROTATED_KEY + "@8-"])[2:],
                         ("key-not-in-force", 6))

    def test_anchor_errors(self):
        other = Path(self.tmp) / "other-anchor"
        other.write_bytes(b"other.example/log\n3\n" + b"A" * 43 + b"=\n\n\xe2\x80\x94 x AAAAAAA=\n")
        self.assertEqual(self.verdict("--anchor", str(other))[2:], ("anchor", None))
        other.write_bytes(b"garbage")
        self.assertEqual(self.verdict("--anchor", str(other))[2:], ("anchor", None))

    def test_usage_errors(self):
        for keys in ([], ["not-a-key"], [LOG_KEY + "@5-5"], [LOG_KEY[:-2] + "c="]):
            with self.subTest(keys=keys):
                self.assertEqual(run(str(self.dir), keys=keys)[0], 2)


class SyntheticLedgerTest(unittest.TestCase):
    """Ledgers built here with test-only seeds: full tiles (300 entries), range exports,
    timestamps and duplicate IDs, which the checked-in vectors do not exercise. These check the
    verifier against this reading of FORMAT.md, not against the reference."""

    LOG = "synthetic.example/ledger"
    SEEDS = [bytes([7]) * 32, bytes([8]) * 32, bytes([9]) * 32]

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.k1, self.k2 = (vkey(self.LOG, seed) for seed in self.SEEDS[:2])

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def export(self, name, n=12, start=0, edit=lambda s, ev: ev, rotate_at=None):
        rotate_at = {5: 1} if rotate_at is None else rotate_at
        entries = synthetic_ledger(n, self.LOG, self.SEEDS, rotate_at, edit)
        cp_seed = self.SEEDS[max([i for s, i in rotate_at.items() if s < n], default=0)]
        out = self.tmp / name
        write_export(out, entries, self.LOG, cp_seed, start)
        return out

    def verdict(self, path, *extra, keys):
        code, out, err = run(str(path), *extra, keys=keys)
        self.assertIsNotNone(out, err)
        return (code, out["ok"], out.get("check"), out.get("seq"), out.get("entries_verified"))

    def test_full_tiles_and_range_export(self):
        keys = [self.k1 + "@0-6", self.k2 + "@6-"]
        full = self.export("full", n=300)
        self.assertTrue((full / "tile/1/000.p/1").is_file())
        self.assertEqual(self.verdict(full, keys=keys), (0, True, None, None, 300))
        part = self.export("part", n=300, start=256)
        self.assertEqual(self.verdict(part, keys=keys)[2:4], ("entry-missing", 0))
        self.assertEqual(self.verdict(part, "--allow-partial", keys=keys),
                         (0, True, None, None, 44))
        # A range export after the rotation: only pinned ranges count (section 6.3).
        self.assertEqual(self.verdict(part, "--allow-partial", keys=[self.k1])[2:4],
                         ("key-not-in-force", 256))
        tile = full / "tile/0/000"
        tile.write_bytes(tile.read_bytes()[:100] + b"\xff" + tile.read_bytes()[101:])
        self.assertEqual(self.verdict(full, keys=keys)[2:4], ("tile", None))
        (part / "tile/entries/001.p/45").parent.mkdir(exist_ok=True)
        (part / "tile/entries/001.p/45").write_bytes(b"")
        self.assertEqual(self.verdict(part, "--allow-partial", keys=keys)[2:4], ("layout", None))

    def test_timestamp_and_duplicate_id(self):
        keys = [self.k1 + "@0-6", self.k2 + "@6-"]
        self.assertEqual(self.verdict(self.export("ok"), keys=keys)[:2], (0, True))

        def old_ts(s, ev):
            return {**ev, "ts": "2026-11-28T09:59:59.999999Z"} if s == 3 else ev

        def dup_id(s, ev):
            return {**ev, "id": f"{2:032x}"} if s == 8 else ev

        def bad_date(s, ev):
            return {**ev, "ts": "2025-02-29T10:00:00.000000Z"} if s == 1 else ev

        self.assertEqual(self.verdict(self.export("ts", edit=old_ts), keys=keys)[2:4],
                         ("timestamp", 3))
        self.assertEqual(self.verdict(self.export("id", edit=dup_id), keys=keys)[2:4],
                         ("duplicate-id", 8))
        self.assertEqual(self.verdict(self.export("date", edit=bad_date), keys=keys)[2:4],
                         ("entry-syntax", 1))

    def test_rotation_rules(self):
        keys = [self.k1 + "@0-6", self.k2 + "@6-"]
        # The checkpoint of size 6 (just after the rotation at 5) is signed by the new key.
        self.assertEqual(self.verdict(self.export("six", n=6), keys=keys)[:2], (0, True))
        five = self.export("five", n=5)  # signed by the old key
        self.assertEqual(self.verdict(five, keys=keys)[:2], (0, True))
        # A rotation to a key named differently from the log is malformed.
        def other_name(s, ev):
            return ({**ev, "data": {"new_key": vkey("other/log", self.SEEDS[1])}}
                    if s == 5 else ev)
        self.assertEqual(self.verdict(self.export("name", edit=other_name), keys=keys)[2:4],
                         ("entry-syntax", 5))

    def test_retired_key_cannot_rotate_past_its_range(self):
        # The log key, retired at 5, rotates at 4 to a key of its holder's (SEEDS[1], not
        # pinned) while the auditor pinned SEEDS[2] from 5 on: refused (section 6.3).
        k3 = vkey(self.LOG, self.SEEDS[2])
        hijack = self.export("hijack", n=8, rotate_at={4: 1})
        self.assertEqual(self.verdict(hijack, keys=[self.k1 + "@0-5", k3 + "@5-"])[2:4],
                         ("key-not-in-force", 5))
        # The same ledger passes when the only pinned key covering 5 on is the one that
        # was in force before the rotation, or when none is.
        self.assertEqual(self.verdict(hijack, keys=[self.k1])[:2], (0, True))
        self.assertEqual(self.verdict(hijack, keys=[self.k1 + "@0-5"])[:2], (0, True))
        # Two rotations: 0 -> 1 at 2, 1 -> 2 at 4; only key 0 pinned, everywhere.
        chain = self.export("chain", n=8, rotate_at={2: 1, 4: 2})
        self.assertEqual(self.verdict(chain, keys=[self.k1])[:2], (0, True))
        self.assertEqual(self.verdict(chain, keys=[self.k1 + "@0-3", self.k2 + "@3-"])[:2],
                         (0, True))
        # Anchors of size 8: signed by a key not in force at 8; a valid one of another history.
        self.assertEqual(self.verdict(chain, "--anchor", str(hijack / "checkpoint"),
                                      keys=[self.k1])[2:4], ("anchor", None))
        other = self.export("other", n=8, rotate_at={2: 1, 4: 2},
                            edit=lambda s, ev: {**ev, "data": {"x": 1}} if s == 6 else ev)
        self.assertEqual(self.verdict(chain, "--anchor", str(other / "checkpoint"),
                                      keys=[self.k1])[2:4], ("fork", 7))


class SpecExamplesTest(unittest.TestCase):
    """The worked examples of FORMAT.md, copied here verbatim."""

    KEY = "portcullis.example/ledger+a3746667+AYqI4910CfGV/VLbLTy6XXLKZwm/HZQSG/N0iAG0D29c"
    ENTRY0 = ('portcullis/event/v1\n{"actor":{"groups":[],"sub":"system:portcullis","via":'
              '"system"},"data":{},"id":"0f1e2d3c4b5a69788796a5b4c3d2e1f0","kind":"ledger.'
              'created","log":"portcullis.example/ledger","prev":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'
              'AAAAAAAAAAAA=","seq":0,"ts":"2026-11-28T10:00:00.000000Z","v":1}\n\n\u2014 '
              "portcullis.example/ledger o3RmZ1dTZ3DYtci/1qppA+ENAHJ/ZO3k2iAsw12DSjl+WPL3pbNOs"
              "CeUIaM/x62Cd0Bsj0r6FIPNW3MDOwSPdclxsAg=\n").encode()
    ENTRY1 = ('portcullis/event/v1\n{"actor":{"groups":["web"],"sub":"alice","via":"token"},'
              '"data":{"reason":"INC-4711: fix TLS host"},"id":"a1b2c3d4e5f60718293a4b5c6d7e8f90"'
              ',"kind":"request.created","log":"portcullis.example/ledger","prev":"ZscjVNOlviu65'
              '8dBJraERWDni7+nPKpv6iEu+f5IubE=","seq":1,"ts":"2026-11-28T10:00:01.250000Z","v":1}'
              "\n\n\u2014 portcullis.example/ledger o3RmZ1OrkzaTqcTweEV5yyl5Jn9eLr9Oqp4u754W5+yv5K"
              "8/K7GmaXENVn8s2d11QhqrFqSJcwoxE0/cNR9aNzB3KwM=\n").encode()
    CHECKPOINT = ("portcullis.example/ledger\n2\nxLBHsXBUtCzU/9mxRD4rUaE9yj4cEGMnEHIQAoyPk1Y=\n\n"
                  "\u2014 portcullis.example/ledger o3RmZzPHQnaijWe8MvNUORghCo/3v3SIDbtkRqobcXUiTs"
                  "jKBlBT/XicnL1LagrsPKTE2f9f8S9tZJj+VF5GgJfljwE=\n").encode()
    JSONL0 = ('{"event":' + ENTRY0.decode().split("\n")[1] + ',"leaf_hash":"ZscjVNOlviu658dBJra'
              'ERWDni7+nPKpv6iEu+f5IubE=","seq":0,"signatures":[{"key_id":"a3746667","name":"por'
              'tcullis.example/ledger","signature":"V1NncNi1yL/WqmkD4Q0Acn9k7eTaICzDXYNKOX5Y8vel'
              's06wJ5Qhoz/HrYJ3QGyPSvoUg81bcwM7BI91yXGwCA=="}]}\n').encode()

    def test_key_of_section_2_2(self):
        pub = public_key(b"\x01" * 32)
        self.assertEqual(str(pv.parse_vkey(self.KEY)), self.KEY)
        self.assertEqual(pv.parse_vkey(self.KEY).pub, pub)
        foo = pv.parse_vkey("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
        self.assertEqual(foo.key_id, 0x530D903A)

    def test_signed_note_example(self):
        foo = pv.parse_vkey("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
        note = ("This is an example message.\n\n\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnag"
                "v1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n").encode()
        text, sigs = pv.parse_note(note)
        self.assertTrue(pv.note_verified(text, sigs, [foo]))
        self.assertFalse(pv.note_verified(text + b"x", sigs, [foo]))

    def test_entries_and_checkpoint_of_4_3_7_1_appendix_a(self):
        key = pv.parse_vkey(self.KEY)
        self.assertEqual(len(self.ENTRY0), 420)
        leaves = []
        for raw in (self.ENTRY0, self.ENTRY1):
            e = pv.parse_entry(raw)
            self.assertTrue(pv.verify_line(e.sigs[0], key, e.text))
            leaves.append(pv.leaf_hash(raw))
        self.assertEqual(pv.b64(leaves[0]), "ZscjVNOlviu658dBJraERWDni7+nPKpv6iEu+f5IubE=")
        self.assertEqual(pv.b64(leaves[1]), "GgUrGQuaaxDNc7JtXG8dCNrlGhYxo1mkOilpmlA1090=")
        cp = pv.parse_checkpoint(self.CHECKPOINT)
        self.assertEqual((cp.size, cp.root), (2, pv.mth(leaves)))
        self.assertTrue(cp.verified_by([key]))
        self.assertTrue(pv.verify_inclusion(leaves[1], 1, 2, [leaves[0]], cp.root))
        self.assertEqual(pv.jsonl_line(pv.parse_entry(self.ENTRY0), leaves[0]), self.JSONL0)
        proof = (b"c2sp.org/tlog-proof@v1\nextra " + pv.b64(self.ENTRY1).encode() + b"\nindex 1\n"
                 + pv.b64(leaves[0]).encode() + b"\n\n" + self.CHECKPOINT)
        pinned = [pv.parse_pinned(self.KEY)]
        self.assertEqual(pv.verify_proof_file(proof, pinned)["index"], 1)

    def test_canonical_json_examples_of_3_3(self):
        for src, want in (('{ "b": 1, "a": [true, null, "x"] }', '{"a":[true,null,"x"],"b":1}'),
                          ('{"\ufb01":1,"\U0001F600":2}', '{"\U0001F600":2,"\ufb01":1}'),
                          ('"\\u0041\\u000b\\/\\n\\u2028"', '"A\\u000b/\\n\u2028"')):
            self.assertEqual(pv.canonical(pv.parse_json(src)), want)

    def test_json_subset_refusals(self):
        for bad in ('{"a":1,"\\u0061":2}', '"\\ud800"', '"\\udc00"', '"\\ud800\\u0041"',
                    str(2**53), str(-(2**53)), "1.0", "1e3", "01", "+1", '"\\x"', '"\x01"',
                    "[" * 65 + "]" * 65, "{} {}", "tru", '"\\u00g0"'):
            with self.subTest(json=bad):
                self.assertRaises(ValueError, pv.parse_json, bad)
        pv.parse_json("[" * 64 + "]" * 64)
        self.assertEqual(pv.parse_json(str(2**53 - 1)), 2**53 - 1)

    def test_tile_layout_example_of_8_2(self):
        tiles = [pv.tile_path(*t) for t in pv.tile_set(70000)]
        self.assertEqual(tiles[0], "tile/0/000")
        self.assertIn("tile/0/272", tiles)
        self.assertIn("tile/0/273.p/112", tiles)
        self.assertEqual(tiles[-3:], ["tile/1/000", "tile/1/001.p/17", "tile/2/000.p/1"])
        self.assertEqual(len(tiles), 273 + 1 + 2 + 1)
        self.assertEqual([pv.index_path(n) for n in (0, 1000, 1234067)],
                         ["000", "x001/000", "x001/x234/067"])

    def test_strict_ed25519(self):
        key = pv.parse_vkey(self.KEY)
        e = pv.parse_entry(self.ENTRY0)
        sig = e.sigs[0].sig
        s = int.from_bytes(sig[32:], "little")
        self.assertTrue(pv.ed25519_verify(key.pub, key.point, e.text, sig))
        high_s = sig[:32] + (s + pv.L_ORDER).to_bytes(32, "little")
        self.assertFalse(pv.ed25519_verify(key.pub, key.point, e.text, high_s))
        identity = pv.encode_point(pv.IDENTITY)
        small_r = identity + sig[32:]
        self.assertFalse(pv.ed25519_verify(key.pub, key.point, e.text, small_r))
        name = "portcullis.example/ledger"
        weak = f"{name}+{pv.key_id(name, identity):08x}+" + pv.b64(b"\x01" + identity)
        self.assertRaisesRegex(ValueError, "weak", pv.parse_vkey, weak)
        for bad in ("AAA", "AB==", "AA=", "A A=", "AA==\n", "AA=A", "Zm9v\n"):
            self.assertRaises(ValueError, pv.b64decode, bad)



class ReportBundleParts(unittest.TestCase):
    """The pieces of report-bundle verification (FORMAT.md section 12) that the generated
    bundle of tests/it/python_verifier.rs does not exercise one by one."""

    MANIFEST = ("portcullis/report/v1\norigin o\nreport soc2\nfrom 2026-01-01T00:00:00.000000Z\n"
                "to 2026-02-01T00:00:00.000000Z\nrevoke_sla_ms 1000\nentries 4 9\ncheckpoint 9\n"
                "anchor none\nfile " + "a" * 64 + " checkpoint\nfile " + "b" * 64 + " entries\n"
                "population grants every grant.activated event in the period\n")

    def test_range_root_rebuilds_every_tree(self):
        leaves = [pv.leaf_hash(bytes([i])) for i in range(24)]
        for start in range(24):
            left, pos = [], 0
            for h in range(63, -1, -1):
                if start >> h & 1:
                    left.append(pv.mth(leaves, pos, pos + (1 << h)))
                    pos += 1 << h
            for end in range(start + 1, 25):
                self.assertEqual(pv.range_root(start, left, leaves[start:end]),
                                 pv.mth(leaves[:end]), (start, end))
            if left:
                self.assertRaises(ValueError, pv.range_root, start, left[:-1], leaves[start:])

    def test_consistency_edge_cases(self):
        a, b = pv.leaf_hash(b"a"), pv.leaf_hash(b"b")
        root = pv.node_hash(a, b)
        self.assertTrue(pv.verify_consistency(1, 2, [b], a, root))
        self.assertTrue(pv.verify_consistency(2, 2, [], root, root))
        self.assertFalse(pv.verify_consistency(2, 2, [b], root, root))
        self.assertFalse(pv.verify_consistency(0, 2, [root], pv.mth([]), root))
        self.assertFalse(pv.verify_consistency(2, 1, [b], root, a))

    def test_manifest_parsing(self):
        m = pv.parse_manifest(self.MANIFEST.encode())
        self.assertEqual((m.origin, m.entries, m.checkpoint_size, m.anchor_size),
                         ("o", (4, 9), 9, None))
        self.assertEqual(m.populations, [("grants", "every grant.activated event in the period")])
        bad = {
            "unsorted": self.MANIFEST.replace(" checkpoint\n", " zz\n"),
            "uppercase hash": self.MANIFEST.replace("a" * 64, "A" * 64),
            "empty range": self.MANIFEST.replace("entries 4 9", "entries 9 9"),
            "leading zero": self.MANIFEST.replace("checkpoint 9", "checkpoint 09"),
            "file after population": self.MANIFEST + "file " + "c" * 64 + " proof\n",
            "missing anchor line": self.MANIFEST.replace("anchor none\n", ""),
            "unknown line": self.MANIFEST + "extra x\n",
        }
        for why, text in bad.items():
            with self.assertRaises(ValueError, msg=why):
                pv.parse_manifest(text.encode())

    def test_proof_parsing(self):
        h = pv.b64(bytes(32))
        ok = f"portcullis/report-proof/v1\nstart 3\nend 5\nsize 9\nleft {h}\nleft {h}\nright {h}\n"
        p = pv.parse_range_proof((ok + f"anchor-size 2\nanchor {h}\n").encode())
        self.assertEqual((p.start, p.end, p.size, len(p.left), len(p.right)), (3, 5, 9, 2, 1))
        self.assertEqual(p.anchor, (2, [bytes(32)]))
        for bad in (ok + f"left {h}\n", ok + f"anchor {h}\n", ok[:-1], ok.replace(h, h[:-1], 1),
                    ok.replace("end 5", "end 05")):
            self.assertRaises(ValueError, pv.parse_range_proof, bad.encode())

    def test_cli_usage_errors(self):
        self.assertEqual(run("report", str(HERE / "nowhere"))[0], 2)
        self.assertEqual(run("report", str(HERE), "--allow-partial")[0], 2)

if __name__ == "__main__":
    os.chdir(HERE.parent.parent)
    unittest.main(verbosity=2)
