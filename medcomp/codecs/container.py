"""The ``.mcz`` container: one self-describing file per compressed image (docs/command-line.md, Conventions).

Layout (little endian)::

    b"MCZ\\x89"  magic
    u16         format version
    u8 + ascii  codec id
    u32 + utf8  JSON header (shape, dtype, spacing, intensity mapping, codec parameters, weight sha256 ...)
    u16         number of sections, then for each: u8 + ascii name, u64 + payload bytes
    u32         CRC32 of everything before it

Hand-written rather than a zip/npz: those carry their own directory and padding bytes, which would distort CR at
the small sizes high-ratio codecs reach, and npz invites pickle. Nothing here is ever unpickled.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from medcomp.errors import CorruptFileError, MedcompError

MAGIC = b"MCZ\x89"
VERSION = 1


@dataclass
class Container:
    codec: str
    header: dict
    sections: dict[str, bytes] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        codec = self.codec.encode("ascii")
        header = json.dumps(self.header, separators=(",", ":"), sort_keys=True).encode("utf-8")
        parts = [MAGIC, struct.pack("<HB", VERSION, len(codec)), codec, struct.pack("<I", len(header)), header]
        parts.append(struct.pack("<H", len(self.sections)))
        for name, payload in self.sections.items():
            n = name.encode("ascii")
            parts += [struct.pack("<B", len(n)), n, struct.pack("<Q", len(payload)), bytes(payload)]
        body = b"".join(parts)
        return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> Container:
        if len(data) < len(MAGIC) + 4 or data[: len(MAGIC)] != MAGIC:
            raise CorruptFileError(f"{source}: not a .mcz file (bad magic)")
        body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
        if zlib.crc32(body) & 0xFFFFFFFF != crc:
            raise CorruptFileError(f"{source}: corrupt .mcz file (CRC32 mismatch: the file is damaged or truncated)")
        try:
            pos = len(MAGIC)
            version, n_codec = struct.unpack_from("<HB", body, pos)
            pos += 3
            if version != VERSION:
                raise CorruptFileError(f"{source}: .mcz format version {version} is not supported (this medcomp reads {VERSION})")
            codec = body[pos : pos + n_codec].decode("ascii")
            pos += n_codec
            (n_header,) = struct.unpack_from("<I", body, pos)
            pos += 4
            header = json.loads(body[pos : pos + n_header].decode("utf-8"))
            pos += n_header
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
            (n_sections,) = struct.unpack_from("<H", body, pos)
            pos += 2
            sections = {}
            for _ in range(n_sections):
                (n_name,) = struct.unpack_from("<B", body, pos)
                pos += 1
                name = body[pos : pos + n_name].decode("ascii")
                pos += n_name
                (n_payload,) = struct.unpack_from("<Q", body, pos)
                pos += 8
                if pos + n_payload > len(body):
                    raise ValueError(f"section '{name}' runs past the end of the file")
                sections[name] = body[pos : pos + n_payload]
                pos += n_payload
            if pos != len(body):
                raise ValueError(f"{len(body) - pos} trailing bytes")
        except MedcompError:
            raise
        except (struct.error, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise CorruptFileError(f"{source}: corrupt .mcz file ({exc})") from exc
        return cls(codec, header, sections)


def read_container(path: str | Path) -> Container:
    path = Path(path)
    if not path.is_file():
        raise MedcompError(f"{path}: no such file")
    return Container.from_bytes(path.read_bytes(), str(path))
