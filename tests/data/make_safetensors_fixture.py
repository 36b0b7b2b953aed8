#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes reference.safetensors: the bytes Python's `safetensors.torch.save_file(tensors, path,
metadata={"format": "pt"})` writes for the tensors below, following the Rust library's serializer
(safetensors/src/tensor.rs, `prepare`) with the standard library only:

- tensors sorted by dtype, largest alignment first (the reverse of the Rust `Dtype` enum order), then by name
  (byte order of the UTF-8 names);
- header: compact JSON as serde_json writes it, "__metadata__" first, then each tensor as
  {"dtype", "shape", "data_offsets"} in that field order, non-ASCII characters written as UTF-8, control
  characters escaped; padded with spaces to a multiple of 8 bytes;
- an 8-byte little-endian header length, the header, then each tensor's little-endian bytes in header order.

Run from any directory: python3 tests/data/make_safetensors_fixture.py
"""
import json
import os
import struct

# The Rust Dtype enum, in declaration order.
DTYPE_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
               "F64", "I64", "U64"]
PACK = {"BOOL": "?", "U8": "B", "I8": "b", "I16": "h", "F16": "e", "I32": "i", "F32": "f", "F64": "d", "I64": "q"}


def pack(dtype, values):
    if dtype == "BF16":  # the upper half of the float32 bit pattern (the values below are exact in bfloat16)
        return b"".join(struct.pack("<f", v)[2:] for v in values)
    return struct.pack("<%d%s" % (len(values), PACK[dtype]), *values)


def serialize(tensors, metadata):
    items = sorted(tensors.items(), key=lambda kv: (-DTYPE_ORDER.index(kv[1][0]), kv[0].encode("utf-8")))
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for name, (dtype, shape, values) in items:
        raw = pack(dtype, values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


# name: (dtype, shape, values in C order)
TENSORS = {
    "weight": ("F32", [2, 3], [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]),
    "bias": ("F64", [3], [0.1, -2.25, 1e300]),
    "half": ("F16", [4], [1.0, -2.0, 0.5, 65504.0]),
    "brain": ("BF16", [2], [1.0, -3.5]),
    "count": ("I64", [], [-7]),
    "ids": ("I32", [2, 2], [1, -2, 2147483647, -2147483648]),
    "short": ("I16", [3], [-32768, 0, 32767]),
    "tiny": ("I8", [2], [-128, 127]),
    "bytes": ("U8", [3], [0, 128, 255]),
    "mask": ("BOOL", [3], [True, False, True]),
    "empty": ("F32", [0, 4], []),
    "\u00e9.weight": ("F32", [1], [2.0]),
    "tab\tname": ("U8", [1], [9]),
}

if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference.safetensors")
    with open(out, "wb") as f:
        f.write(serialize(TENSORS, {"format": "pt"}))
