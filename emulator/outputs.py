"""Turning a validated input into fal's output: seed, size, rendered files, URLs.

Rendering runs in a thread pool so the event loop never blocks on Pillow. Output files
are registered in the :class:`~falq.emulator.storage.FileStore` by spec and served at
``{base}/files/{name}``; ``sync_mode`` returns data URIs instead. Outputs have realistic
sizes by default (about 1.7 MB per 1 MP PNG, see :mod:`falq.emulator.render`).

Example::

    maker = OutputMaker(FileStore(), Renderer(), ThreadPoolExecutor(2))
    output, notes = await maker.make(parsed, "fal-ai/qwen-image-2/edit", "http://127.0.0.1:8790",
                                     seed=42, tiny_max_px=0)
    output["images"][0]["width"]
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any

from falq.emulator.render import Renderer, RenderSpec
from falq.emulator.storage import FileStore
from falq.shared.fal.schemas import EditInput, TextToImageInput
from falq.shared.storage.images import inspect_image, parse_data_uri, to_data_uri

FALLBACK_SIZE = (1024, 1024)


class OutputMaker:
    """Renders outputs and answers file downloads. ``own_netlocs`` are host:port strings
    under which clients reach this emulator (so its own file URLs can be read as inputs)."""

    def __init__(self, files: FileStore, renderer: Renderer, executor: Executor) -> None:
        self.files = files
        self.renderer = renderer
        self.executor = executor
        self.own_netlocs: set[str] = set()

    async def make(
        self,
        parsed: TextToImageInput | EditInput,
        endpoint: str,
        base_url: str,
        *,
        seed: int,
        tiny_max_px: int,
        small: bool = False,
    ) -> tuple[dict[str, Any], list[str]]:
        """``({"images": [...], "seed": n}, log notes)`` for one request.

        ``small`` renders the old flat backgrounds instead of realistic-size textured ones.
        """
        loop = asyncio.get_running_loop()
        notes: list[str] = []
        size = parsed.size_pixels()
        if size is None and isinstance(parsed, EditInput):
            size = await loop.run_in_executor(self.executor, self.input_image_size, parsed.image_urls[-1])
            if size is None:
                notes.append("could not read the last input image; output size defaults to 1024x1024")
        width, height = size or FALLBACK_SIZE
        images = []
        for i in range(parsed.num_images):
            spec = RenderSpec(parsed.prompt, endpoint, seed, width, height, parsed.output_format,
                              i, parsed.num_images, tiny_max_px, small)  # fmt: skip
            data = await loop.run_in_executor(self.executor, self.renderer.render, spec)
            w, h = spec.pixel_size()
            if parsed.sync_mode:
                url, name = to_data_uri(data, spec.content_type), f"{seed}-{i}.{spec.fmt}"
            else:
                name = self.files.new_name(ext=spec.fmt)
                self.files.put_spec(name, spec, len(data))
                url = f"{base_url}/files/{name}"
            images.append({"url": url, "content_type": spec.content_type, "file_name": name,
                           "file_size": len(data), "width": w, "height": h})  # fmt: skip
        return {"images": images, "seed": seed}, notes

    def input_image_size(self, url: str) -> tuple[int, int] | None:
        """Size of an input image we can see: a data URI, or a file this emulator serves."""
        try:
            if url[:5].lower() == "data:":
                info = inspect_image(parse_data_uri(url)[1])
                return info.width, info.height
            name = self.files.name_from_url(url, self.own_netlocs)
            stored = self.files.get(name) if name else None
            if stored is not None and stored.spec is not None:
                return stored.spec.pixel_size()
            if stored is not None and stored.data is not None:
                info = inspect_image(stored.data)
                return info.width, info.height
        except ValueError:
            return None
        return None

    async def file_bytes(self, name: str) -> tuple[bytes, str] | None:
        """Bytes and content type of a stored file (re-rendered from its spec if needed)."""
        stored = self.files.get(name)
        if stored is None:
            return None
        if stored.data is not None:
            return stored.data, stored.content_type
        assert stored.spec is not None
        # A rendered image is served at once, as fal's CDN serves a finished file: through the
        # render pool it would wait behind the renders of other requests completing meanwhile.
        data = self.renderer.cached(stored.spec)
        if data is None:
            loop = asyncio.get_running_loop()
            data = await loop.run_in_executor(self.executor, self.renderer.render, stored.spec)
        return data, stored.content_type
