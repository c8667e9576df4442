#!/usr/bin/env python3
"""Writes the initial seed inputs of the fuzz targets into fuzz/corpus/<target>/ (beside what is there).

The committed corpora (fuzz/corpus/<target>/) grew from these seeds and were
minimised with `cargo fuzz cmin`; run this only to start a corpus afresh.
No real My Number appears: valid numbers are generated from the check-digit
rule (総務省令 平成26年第85号 第5条) with a fixed random seed.
"""

import base64
import hashlib
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(20261123)


def check_digit(first_eleven):
    total = sum(int(d) * w for d, w in zip(first_eleven, [6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2]))
    r = total % 11
    return 0 if r <= 1 else 11 - r


def valid_number():
    first = "".join(rng.choice("0123456789") for _ in range(11))
    return first + str(check_digit(first))


def wrong_number():
    first = "".join(rng.choice("0123456789") for _ in range(11))
    return first + str((check_digit(first) + rng.randint(1, 9)) % 10)


def full_width(text):
    return "".join(chr(ord(c) - ord("0") + 0xFF10) if c.isdigit() else c for c in text)


def grouped(number, separator):
    return separator.join([number[:4], number[4:8], number[8:]])


B32 = "abcdefghijklmnopqrstuvwxyz234567"


def opaque_token():
    return "mnt_" + "".join(rng.choice(B32) for _ in range(26))


def job_id():
    return "job_" + "".join(rng.choice(B32) for _ in range(16))


def write(target, name, data):
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


# --- protobuf encoding, just what the request messages need ---------------

def varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_varint(number, value):
    return varint(number << 3) + varint(value)


def field_bytes(number, value):
    if isinstance(value, str):
        value = value.encode("utf-8")
    return varint((number << 3) | 2) + varint(len(value)) + value


def timestamp(seconds, nanos=0):
    return field_varint(1, seconds) + (field_varint(2, nanos) if nanos else b"")


NOW = 1_795_392_000  # 2026-11-23T00:00:00Z, the fuzz target's "now"


def main():
    n = valid_number()
    numbers = [
        n,
        full_width(n),
        grouped(n, "-"),
        grouped(full_width(n), "\u3000"),
        grouped(n, "\u2212"),
        wrong_number(),
        n[:11],
        n + "5",
        n[:11] + "a" + n[11],
        "token " + grouped(valid_number(), " ") + " is not listed",
        "6214.9832.025",
        "\u0968" * 11,
    ]
    for i, text in enumerate(numbers):
        write("my_number", f"seed-{i:02}", text)

    identifiers = [
        "demo", "acme-corp", "a", "t-" + valid_number(), "Demo", "x-",
        opaque_token(), opaque_token().upper(), wrong_number(), valid_number(),
        job_id(), "job_" + valid_number() + "aaaa",
        "payroll", "svc.payroll-01@acme.example", "line\nbreak",
        "tax-withholding-slip", "opaque", "legacy-digits",
    ]
    for i, text in enumerate(identifiers):
        write("identifiers", f"seed-{i:02}", text)

    # sealed_record: mode byte, then the case. Records and wrapped keys are
    # made well-formed under keys the target does not have, so they reach the
    # tag check.
    for i in range(6):
        token = opaque_token().encode()
        version = [1, 2, 7, 9][i % 4]
        record = bytes([1]) + struct.pack(">I", version) + rng.randbytes(12) + rng.randbytes(12 + i) + rng.randbytes(16)
        # arbitrary reads the token's length from the byte in front of it
        # (scaled to what is left); the fuzzer soon finds the right split.
        write("sealed_record", f"open-{i}", bytes([0]) + bytes([len(token)]) + token + record)
        write("sealed_record", f"seal-{i}", bytes([1]) + rng.randbytes(40 + 8 * i))
        wrapped = bytes([1]) + rng.randbytes(12 + 32 + 16)
        write("sealed_record", f"unwrap-{i}", bytes([2, i % 3, 4]) + b"acme" + struct.pack(">I", i) + wrapped)
        write("sealed_record", f"wrap-{i}", bytes([3]) + rng.randbytes(80 + 4 * i))
    key = hashlib.sha256(b"not a real key").digest()
    good = b"mnvault-root-key v1\n" + base64.b64encode(key) + b"\n"
    for i, contents in enumerate([
        good,
        good[:-1],
        good + b"more\n",
        good.replace(b"v1", b"v2"),
        b"mnvault-root-key v1\n" + base64.b64encode(key[:31]) + b"\n",
        b"garbage\n",
    ]):
        write("sealed_record", f"keyfile-{i}", bytes([4]) + contents)

    for i in range(8):
        write("audit_entry", f"seed-{i}", bytes([i % 2]) + rng.randbytes(64 + 32 * i))

    tenant = "demo"
    requests = [
        # TokenizeRequest: tenant, number, format
        field_bytes(1, tenant) + field_bytes(2, grouped(valid_number(), "-")) + field_varint(3, 1),
        field_bytes(1, tenant) + field_bytes(2, full_width(valid_number())) + field_varint(3, 2),
        field_bytes(1, "Demo") + field_bytes(2, wrong_number()) + field_varint(3, 7),
        # DescribeTokenRequest: tenant, token
        field_bytes(1, tenant) + field_bytes(2, opaque_token()),
        # CreateFilingJobRequest
        field_bytes(1, tenant) + field_bytes(2, "tax-withholding-slip")
        + field_bytes(3, opaque_token()) + field_bytes(3, wrong_number()) + field_bytes(3, opaque_token())
        + field_bytes(4, timestamp(NOW + 7 * 86400)) + field_varint(5, 2) + field_bytes(6, "2026 年末調整"),
        field_bytes(1, tenant) + field_bytes(2, "tax-withholding-slip") + field_bytes(3, opaque_token())
        + field_bytes(4, timestamp(NOW - 1)) + field_bytes(6, "see " + valid_number()),
        # Approve / Get / Cancel / Detokenize
        field_bytes(1, job_id()),
        field_bytes(1, job_id()) + field_bytes(2, opaque_token()) + field_bytes(2, wrong_number()),
        # CreateTenantRequest
        field_bytes(1, "acme-corp") + field_bytes(2, "株式会社アクメ"),
        # ListAuditEntriesRequest
        field_bytes(1, tenant) + field_bytes(2, timestamp(NOW - 86400)) + field_bytes(3, timestamp(NOW))
        + field_bytes(4, opaque_token()) + field_bytes(5, job_id()) + field_bytes(6, "filing.detokenize")
        + field_varint(7, 10) + field_varint(8, 50),
        b"",
    ]
    for i, data in enumerate(requests):
        write("request", f"seed-{i:02}", data)


if __name__ == "__main__":
    main()
