"""Reading a server-sent-events stream without trusting the server to end its lines.

httpx's ``iter_lines`` buffers a line until its newline arrives, so a stream that sends
bytes without ever a newline grows memory without bound. :func:`bounded_lines` splits
the byte stream itself and gives up past a length limit.
"""

from __future__ import annotations

from collections.abc import Iterator

from falq.shared.errors import FalBadAnswer


def bounded_lines(chunks: Iterator[bytes], max_line: int) -> Iterator[str]:
    """Text lines (LF or CRLF) of a byte stream; :class:`FalBadAnswer` past ``max_line`` bytes.

    Example::

        >>> list(bounded_lines(iter([b"data: 1\\r\\n", b"\\n"]), 100))
        ['data: 1', '']
    """
    buf = b""
    for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line.removesuffix(b"\r").decode("utf-8")
        if len(buf) > max_line:
            raise FalBadAnswer("status stream sent an oversized line")
    if buf:
        yield buf.removesuffix(b"\r").decode("utf-8")
