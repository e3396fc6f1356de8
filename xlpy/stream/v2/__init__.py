"""Migration v2 streams (Xen 4.6+): libxc images, libxl streams, ``xl save`` files.

* :mod:`.format` -- constants and struct layouts named as Xen's specs;
* :mod:`.records` -- typed headers, :class:`~.records.V2Record` and its decoded bodies;
* :mod:`.reader` -- :class:`~.reader.V2Reader`, pull-based over a ByteSource;
* :mod:`.writer` -- :class:`~.writer.V2Writer`, a streaming, byte-exact writer;
* :mod:`.verify` -- :class:`~.verify.V2Checker` and :func:`~.verify.verify_stream`
  (strict as Xen's verify-stream-v2, or tolerant as the receivers).
"""
