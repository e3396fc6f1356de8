"""``xlpy verify``: strict vs tolerant semantics, error locations, the command line."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.paths import REPO
from tests.helpers.v2_streams import V2_SAMPLE_SPECS, V2Sample, v2_sample
from xlpy.stream.source import ByteSource
from xlpy.stream.v2 import format as F
from xlpy.stream.v2.verify import VerifyReport, verify_stream, xenstore_pairs
from xlpy.stream.v2.writer import V2Writer


def _verify(data: bytes, *, strict: bool) -> VerifyReport:
    return verify_stream(ByteSource(io.BytesIO(data)), strict=strict)


def _hvm(*extra: tuple[int, bytes], padding_byte: int = 0) -> bytes:
    """A small HVM libxc image with ``extra`` records before the tail."""
    out = io.BytesIO()
    w = V2Writer(out)
    w.image_header()
    w.domain_header(F.DHDR_TYPE_X86_HVM)
    w.static_data_end()
    w.page_data_pfns([0, 1], bytes(8192))
    for t, body in extra:
        w.write_record(t, body)
    w.hvm_params([(1, 2)])
    w.hvm_context(b"ctx")
    w.end()
    data = bytearray(out.getvalue())
    if padding_byte:
        data[-8 - 5] = padding_byte  # in HVM_CONTEXT's 5 bytes of padding
    return bytes(data)


def test_samples_valid_in_both_modes(v2_samples: dict[str, V2Sample]) -> None:
    for name, s in v2_samples.items():
        for strict in (True, False):
            r = _verify(s.data, strict=strict)
            assert r.valid, (name, strict, r.error)
            assert r.framing == ("xl" if s.fmt == "xl" else "bare")
            assert r.format == ("libxc" if s.fmt == "libxc" else "libxl")
    assert _verify(v2_samples["pv64-libxc-v3"].data, strict=True).pages == 9


def test_nonzero_padding_strict_only() -> None:
    data = _hvm(padding_byte=0x41)
    assert _verify(data, strict=False).valid
    r = _verify(data, strict=True)
    assert r.error is not None and r.error.field == "padding"  # type: ignore[union-attr]
    assert r.error.record == 3  # type: ignore[union-attr]  # HVM_CONTEXT


@pytest.mark.parametrize(
    ("record", "strict_ok", "tolerant_ok"),
    [
        ((0x80000123, b"opt"), False, True),  # optional record: the receiver skips it
        ((F.REC_TYPE_TOOLSTACK, b"x"), False, True),  # 4.6 senders
        ((F.REC_TYPE_PAGE_DATA, struct.pack("<II", 1, 7) + struct.pack("<Q", 3) + bytes(4096)),
         False, True),  # reserved field
        ((F.REC_TYPE_PAGE_DATA, struct.pack("<II", 1, 0) + struct.pack("<Q", 3 | 1 << 53)
          + bytes(4096)), False, True),  # pfn reserved bits
        ((F.REC_TYPE_PAGE_DATA, struct.pack("<II", 0, 0)), False, False),  # count 0
        ((F.REC_TYPE_PAGE_DATA, struct.pack("<II", 1, 0) + struct.pack("<Q", 6 << 60)),
         False, False),  # reserved page type
        ((F.REC_TYPE_X86_PV_VCPU_BASIC, bytes(8)), True, False),  # PV record in an HVM image
        ((F.REC_TYPE_STATIC_DATA_END, b""), True, False),  # a second one
        ((F.REC_TYPE_VERIFY, b"12345678"), False, True),
        ((F.REC_TYPE_HVM_PARAMS, struct.pack("<II", 0, 0)), True, True),
        ((F.REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST, b""), False, False),
        ((0x44, b""), False, False),  # unknown mandatory record
    ],
)  # fmt: skip
def test_strict_vs_tolerant(record: tuple[int, bytes], strict_ok: bool, tolerant_ok: bool) -> None:
    data = _hvm(record)
    assert _verify(data, strict=True).valid == strict_ok
    assert _verify(data, strict=False).valid == tolerant_ok


def test_zero_content_vcpu_records_warn() -> None:
    """4.6-4.8 senders wrote XSAVE/MSRS records with only the vcpu header."""
    out = io.BytesIO()
    w = V2Writer(out)
    w.image_header(version=2)
    w.domain_header(F.DHDR_TYPE_X86_PV)
    w.x86_pv_info(8, 4)
    w.x86_pv_p2m_frames(0, 0, [0])
    w.page_data_pfns([0], bytes(4096))
    w.x86_pv_vcpu_basic(0, bytes(5168))
    w.x86_pv_vcpu_xsave(0, b"")
    w.x86_pv_vcpu_msrs(0, b"")
    w.shared_info(bytes(4096))
    w.end()
    for strict in (True, False):
        r = _verify(out.getvalue(), strict=strict)
        assert r.valid and len(r.warnings) == 2, r.warnings


def test_error_names_offset_record_and_field() -> None:
    data = bytearray(_hvm())
    # the PAGE_DATA record is record 1, at 40 + 8; break pfn[1]'s type nibble
    struct.pack_into("<Q", data, 48 + 8 + 8 + 8, 1 | 7 << 60)
    r = _verify(bytes(data), strict=False)
    err = r.error
    assert err is not None
    assert (err.offset, err.record, err.field) == (48 + 8 + 16, 1, "pfn[1].type")  # type: ignore[union-attr]
    assert "offset 72" in str(err) and "record 1" in str(err)


def test_truncation_is_reported_as_such() -> None:
    data = _hvm()
    r = _verify(data[:100], strict=True)
    assert r.error is not None and r.to_json()["error"]["kind"] == "truncated"
    assert r.to_json()["error"]["record"] == 1


def test_xenstore_pairs() -> None:
    assert xenstore_pairs(b"a\0b\0c\0d\0") == [(b"a", b"b"), (b"c", b"d")]
    assert xenstore_pairs(b"") == []
    with pytest.raises(ValueError, match="NUL"):
        xenstore_pairs(b"a\0b")
    with pytest.raises(ValueError, match="even"):
        xenstore_pairs(b"a\0b\0c\0")


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "xlpy", "verify", *args],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )


def test_cli_exit_codes_and_json(tmp_path: Path, v2_samples: dict[str, V2Sample]) -> None:
    good = tmp_path / "good"
    good.write_bytes(v2_samples["pv-xl"].data)
    bad = tmp_path / "bad"
    bad.write_bytes(_hvm(padding_byte=1))
    ok = _cli(str(good), "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["valid"] and doc["framing"] == "xl" and doc["format"] == "libxl"
    assert _cli(str(bad)).returncode == 0
    strict = _cli(str(bad), "--strict")
    assert (
        strict.returncode == 1 and b"padding" in strict.stderr and b"Traceback" not in strict.stderr
    )
    assert _cli(str(tmp_path / "missing")).returncode == 2
    assert _cli(str(good), "--format", "nope").returncode == 2
    # forcing a format that is not there fails as a stream error
    assert _cli(str(good), "--format", "libxc").returncode == 1


def test_cli_reads_stdin(v2_samples: dict[str, V2Sample]) -> None:
    res = _cli("-", "--strict", stdin=v2_samples["hvm-libxl"].data)
    assert res.returncode == 0, res.stderr
    assert b"valid v2 stream" in res.stdout


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sample=st.sampled_from(["pv64-libxc-v3", "hvm-libxl", "pv-xl"]),
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), max_size=4),
    cut=st.integers(0, 1 << 20),
    strict=st.booleans(),
)
def test_never_crashes_on_damaged_streams(
    sample: str, flips: list[tuple[int, int]], cut: int, strict: bool
) -> None:
    """Any damage ends in a report (valid or with a located error), never an exception."""
    data = bytearray(v2_sample(**V2_SAMPLE_SPECS[sample]).data)  # type: ignore[arg-type]
    for pos, x in flips:
        data[pos % len(data)] ^= x
    data = data[: len(data) - cut % 64] if cut % 3 else data[: cut % len(data)]
    r = _verify(bytes(data), strict=strict)
    if r.error is not None:
        assert getattr(r.error, "offset", None) is not None
