"""Real libxc of every release without a hypervisor: the builder of each release's
libraries and the fakexen shim (:mod:`.builder`), and the ``fakexen`` restore backend
(:mod:`.backend`, :mod:`.cli`).  The shim itself is C: ``fakexen/fakexen.c``.
"""
