"""Receiver generations: what each libxc release's ``xc_domain_restore`` does differently.

One state machine (:mod:`xlpy.receiver.legacy`) reads these parameters instead of
keeping one copy of the control flow per release.  Source: legacy-stream.md §0.1, §0.2,
§10.7-§10.9, §15.1.
"""

from __future__ import annotations

from dataclasses import dataclass

from xlpy.errors import UsageError
from xlpy.stream.legacy import format as F


@dataclass(frozen=True, slots=True)
class Generation:
    """The behaviour-changing facts of one receiver release."""

    name: str
    #: Spec label: "R-pre", "R-bug", "R-fix" or "R-fix44" (§0.1).
    label: str
    #: Chunk ids ``pagebuf_get_one`` accepts (§5 "since").
    known_ids: frozenset[int]
    #: Type nibbles that carry no page data (§4.2).
    dataless_nibbles: frozenset[int]
    #: Largest VCPU_INFO max id accepted (§15.1).
    max_vcpu_id: int
    #: ``xc_domain_restore`` takes ``checkpointed_stream`` (be2f2316f1 / 7051d5c872).
    takes_checkpointed: bool
    #: Post-completion read errors ``goto out`` instead of ``goto finish`` (c2ba706c44).
    post_completion_fatal: bool
    #: Name in the heartbeat/EOF messages: ``read_exact_timed`` or ``rdexact`` (50082c5090).
    rdexact_name: str
    #: 4.0.x: state-machine errors carry no errno suffix, the timeout goes to stderr
    #: and EOF is silent (§10.7, §11).
    legacy_logging: bool
    #: 4.1+ log through xentoollog's stdio logger; 4.0 has no xentoollog, its
    #: ``xc_default_error_handler`` prints the error itself.
    xentoollog: bool = True
    #: -14 only sets an HVM param (4.5, 9d3946cd9b) instead of validating the frame.
    genid_is_param: bool = False
    #: Passes -11's value through as a feature mask instead of 1 (84bfbd5d75).
    viridian_mask: bool = False
    #: Knows the "xcnt" ext-info block and per-vcpu xsave tail records (d0cf814150, 4.1);
    #: 4.0 skips the block as unknown and reads tails without xsave (§12, S-post Remus).
    knows_xcnt: bool = True
    #: TOOLSTACK (-18) payload read errors are ignored (<= 4.3.x, fixed by f46fa80ec4).
    toolstack_errors_ignored: bool = True
    #: "legacy" (xc_domain_restore.c) or "v2" (xg_sr_restore.c, :mod:`xlpy.receiver.v2`).
    stream_format: str = "legacy"


#: Data-less type nibbles by the release that added them (§0.2, §4.2): XTAB always,
#: XALLOC (0xE) since 4.2.0 (f35c8f6857), BROKEN (0xD) since 4.3.0 (b7a98e60d4).
_DATALESS_4_1 = F.DATALESS_NIBBLES_4_0
_DATALESS_4_2 = frozenset({0xE, 0xF})
_DATALESS_4_3 = F.DATALESS_NIBBLES


def _gen(
    name: str,
    label: str,
    known: frozenset[int],
    *,
    dataless: frozenset[int] = _DATALESS_4_3,
    rdexact: str = "read_exact_timed",
    max_vcpu: int = F.XC_SR_MAX_VCPUS - 1,
) -> Generation:
    return Generation(
        name=name,
        label=label,
        known_ids=known,
        dataless_nibbles=dataless,
        max_vcpu_id=max_vcpu,
        takes_checkpointed=label in ("R-fix", "R-fix44"),
        post_completion_fatal=label == "R-fix44",
        rdexact_name=rdexact,
        legacy_logging=label == "R-pre",
        xentoollog=label != "R-pre",
        genid_is_param=name == "xen-4.5",
        viridian_mask=name == "xen-4.5",
        toolstack_errors_ignored=name not in ("xen-4.4", "xen-4.5"),
        knows_xcnt=label != "R-pre",
    )


GENERATIONS: dict[str, Generation] = {
    g.name: g
    for g in (
        _gen(
            "xen-4.0",
            "R-pre",
            F.KNOWN_IDS_4_0,
            dataless=_DATALESS_4_1,
            max_vcpu=F.MAX_VCPUS_4_0 - 1,
        ),
        _gen(
            "xen-4.1",
            "R-bug",
            F.KNOWN_IDS_4_1,
            dataless=_DATALESS_4_1,
            max_vcpu=F.MAX_VCPUS_4_0 - 1,
        ),
        # 4.2.0-4.2.4 keep the read_exact_timed wording (legacy-stream.md §0.2 L74 dates
        # the rename to 4.3.3 and 4.4.0); 4.2.5 has its backport 50d9892 ("Correct
        # read_exact() error messages"): rdexact() logs __func__
        # (4.2.5:tools/libxc/xc_domain_restore.c L79, L93).
        _gen("xen-4.2", "R-bug", F.KNOWN_IDS_4_2, dataless=_DATALESS_4_2),
        _gen("xen-4.2.5", "R-bug", F.KNOWN_IDS_4_2, dataless=_DATALESS_4_2, rdexact="rdexact"),
        _gen("xen-4.3.0", "R-bug", F.KNOWN_IDS_4_2),
        _gen("xen-4.3.1", "R-bug", F.KNOWN_IDS_4_2),
        _gen("xen-4.3.2", "R-fix", F.KNOWN_IDS_4_2),
        _gen("xen-4.3.3", "R-fix", F.KNOWN_IDS_4_2, rdexact="rdexact"),
        _gen("xen-4.4", "R-fix44", F.KNOWN_IDS_4_2, rdexact="rdexact"),
        _gen("xen-4.5", "R-fix", F.KNOWN_IDS_4_5, rdexact="rdexact"),
        # Migration v2 (4.6+), with 4.17's messages; the legacy-only fields do not apply.
        Generation(
            name="xen-4.17",
            label="V2",
            known_ids=frozenset(),
            dataless_nibbles=frozenset(),
            max_vcpu_id=F.XC_SR_MAX_VCPUS - 1,
            takes_checkpointed=True,
            post_completion_fatal=False,
            rdexact_name="read_exact",
            legacy_logging=False,
            stream_format="v2",
        ),
    )
}
#: Accepted spellings for releases that behave like a listed one.
ALIASES = {"xen-4.3": "xen-4.3.0", "xen-4.3.4": "xen-4.3.3"}


def generation(name: str) -> Generation:
    """The generation called ``name`` (e.g. ``"xen-4.3.1"``), or :class:`UsageError`."""
    key = ALIASES.get(name, name)
    try:
        return GENERATIONS[key]
    except KeyError:
        known = ", ".join(GENERATIONS)
        raise UsageError(f"unknown receiver generation {name!r} (known: {known})") from None
