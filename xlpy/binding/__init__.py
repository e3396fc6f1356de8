"""The thin cffi binding to libxenguest's ``xc_domain_restore``, for every ABI generation.

:func:`restore_libxc` is the libxc backend's one entry point; :func:`detect` tells which
library and generation it would use.  Layers: :mod:`.generations` (the declarations as
data), :mod:`.detect` (which library), :mod:`.loader` (the raw cffi ABI-mode binding),
:mod:`.restore` (checked call, callbacks, errors), :mod:`.helper` (out of process).
"""

from __future__ import annotations

from collections.abc import Mapping

from xlpy.binding.callbacks import Callback
from xlpy.binding.detect import Abi, detect
from xlpy.binding.generations import GENERATIONS, Generation
from xlpy.binding.restore import RestoreArgs, RestoreOutputs, restore_in_process
from xlpy.errors import UsageError

__all__ = [
    "GENERATIONS",
    "Abi",
    "Callback",
    "Generation",
    "RestoreArgs",
    "RestoreOutputs",
    "detect",
    "restore_libxc",
]


def restore_libxc(
    request: RestoreArgs,
    callbacks: Mapping[str, Callback] | None = None,
    *,
    abi: Abi | None = None,
    out_of_process: bool = True,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> RestoreOutputs:
    """Restore a domain from ``request.io_fd`` with the installed libxenguest.

    ``callbacks`` maps ``restore_callbacks`` slot names (``checkpoint``, ``suspend``,
    ``postcopy``, ``wait_checkpoint``, ``restore_results``, ``static_data_done``,
    ``toolstack_restore``) to Python callables taking the C arguments without ``data``.
    By default libxc runs in a helper process (``out_of_process``), so its ``assert``s
    and crashes surface as :class:`~xlpy.errors.LibxcCrashed`; ``env`` is added to the
    helper's environment (in process it must be None).  Raises
    :class:`~xlpy.errors.UsageError` for anything libxc would assert on,
    :class:`~xlpy.errors.XenUnavailable` without a hypervisor or library,
    :class:`~xlpy.errors.XenError` when libxc fails, or a callback's own exception.
    """
    abi = detect() if abi is None else abi
    callbacks = {} if callbacks is None else callbacks
    if out_of_process:
        # Imported here: ``python -m xlpy.binding.helper`` must not find itself half-run.
        from xlpy.binding.helper import restore_out_of_process

        return restore_out_of_process(abi, request, callbacks, timeout=timeout, env=env)
    if env:
        raise UsageError("an environment for libxc needs the out-of-process helper")
    return restore_in_process(abi, request, callbacks)
