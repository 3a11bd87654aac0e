"""The web console's pure parts: thumbnails, the chart's arithmetic, filters, commands.

Its sessions live in Redis: tests/integration/test_console_sessions.py."""

from __future__ import annotations

import io
import shlex

import pytest
from PIL import Image

from falq.gateway.console.access import Refused
from falq.gateway.console.data import chart, commands, parse_gallery, timeline
from falq.gateway.console.thumbs import ByteLRU, NoPreview, Thumbnails, make_thumbnail
from falq.shared.errors import InvalidInput
from falq.shared.jobs.records import JobRecord, StoredImage
from falq.shared.settings import Settings
from falq.shared.storage.s3 import Storage


def _png(w: int, h: int, mode: str = "RGBA") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), (10, 200, 30, 128) if mode == "RGBA" else (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_thumbnail_is_a_small_jpeg_with_the_aspect_kept() -> None:
    out = make_thumbnail(_png(1600, 900), 384)
    with Image.open(io.BytesIO(out)) as im:
        assert im.format == "JPEG" and im.size == (384, 216) and im.mode == "RGB"
        pixel = im.getpixel((10, 10))
        assert isinstance(pixel, tuple)
        r, g, b = pixel  # half-transparent green flattened onto white
        assert g > 200 and r > 100 and b > 100


def test_no_preview_for_garbage() -> None:
    with pytest.raises(NoPreview):
        make_thumbnail(b"not an image at all", 384)


def test_lru_keeps_within_its_byte_budget() -> None:
    lru = ByteLRU(10)
    lru.put("a", b"12345")
    lru.put("b", b"12345")
    assert lru.get("a") == b"12345"  # a is now the most recent
    lru.put("c", b"123")
    assert lru.get("b") is None and lru.get("a") == b"12345" and lru.get("c") == b"123"


def test_chart_bars_stack_failed_on_completed_within_the_plot() -> None:
    c = chart([(100, 0, 0), (101, 4, 0), (102, 2, 2)], width=300, height=120)
    assert c.peak == 4 and c.total_completed == 6 and c.total_failed == 2
    tall, mixed = c.bars[1], c.bars[2]
    assert tall.done_h == pytest.approx(120 - 18 - 6) and tall.fail_h == 0
    assert mixed.done_h == pytest.approx(mixed.fail_h) and mixed.fail_y + mixed.fail_h == pytest.approx(mixed.done_y)
    assert c.bars[0].done_h == 0 and c.bars[0].minute == "01:40"


def test_gallery_filters_name_every_bad_field() -> None:
    with pytest.raises(InvalidInput) as err:
        parse_gallery({"state": "done", "endpoint": "x/y", "date": "yesterday", "before": "soon", "q": "x" * 201})
    assert sorted(e.field for e in err.value.errors) == ["before", "date", "endpoint", "q", "state"]
    q = parse_gallery({"state": "failed", "date": "2026-12-01", "q": " fox "})
    assert q.state == "failed" and q.text == "fox" and q.params(before=1.5)["before"] == "1.5"


def test_commands_quote_hostile_prompts_and_carry_no_key() -> None:
    prompt = "it's a \"fox\"; rm -rf / $(whoami) `id`"
    rec = JobRecord.new(endpoint="fal-ai/qwen-image-2/pro/text-to-image",
                        input={"prompt": prompt, "seed": 3, "image_size": {"width": 640, "height": 480},
                               "enable_safety_checker": False})
    cmds = commands(rec, "http://gw:8080")
    argv = shlex.split(cmds["falq"])
    assert argv[:3] == ["falq", "generate", prompt] and "--pro" in argv and "--no-safety-checker" in argv
    assert argv[argv.index("--image-size") + 1] == "640x480"
    curl = shlex.split(cmds["curl"])
    assert curl[-1] == "http://gw:8080/v1/jobs" and "Authorization: Key $FALQ_API_KEY" in curl
    big = JobRecord.new(endpoint="fal-ai/qwen-image-2/edit",
                        input={"prompt": "p", "image_urls": ["data:" + "A" * 9000]})
    assert set(commands(big, "http://gw")) == {"status", "curl_status"}


def test_timeline_durations_between_states() -> None:
    rec = JobRecord.new(endpoint="fal-ai/qwen-image-2/text-to-image", input={"prompt": "p"})
    rec.timestamps = {"queued": 10.0, "in_queue": 10.5, "in_progress": 12.0, "completed": 15.0}
    steps = timeline(rec)
    assert [(s.state, s.seconds) for s in steps] == [("queued", 0.5), ("in_queue", 1.5), ("in_progress", 3.0),
                                                     ("completed", 0.0)]
    rec.timestamps = {"queued": 10.0, "in_progress": 11.0}
    assert timeline(rec)[-1].seconds is None  # still running


def test_thumbnail_keys_sit_in_the_image_s_tenant_folder() -> None:
    storage = Storage(Settings(s3_prefix="falq", _env_file=None), client=object())  # type: ignore[call-arg,arg-type]
    thumbs = Thumbnails(storage, 384)
    ep = "fal-ai/qwen-image-2/text-to-image"

    def img(key: str) -> StoredImage:
        return StoredImage(index=0, bucket="b", key=key, size=1, sha256="ab" * 32, content_type="image/png",
                           width=1, height=1)

    default = img(storage.object_key(ep, "j1", 0.0, 0, "png"))
    acme = img(storage.key_base(ep, "j2", 0.0, 0, "acme") + ".png")
    nested = img(storage.key_base(ep, "j3", 0.0, 0, "teams/blue") + ".png")
    assert thumbs.folder_of(ep, default) == "" and thumbs.key(default) == f"falq/_thumbs/384/{'ab' * 32}.jpg"
    assert thumbs.folder_of(ep, acme) == "acme"
    assert thumbs.key(acme, "acme") == f"falq/acme/_thumbs/384/{'ab' * 32}.jpg"
    assert thumbs.folder_of(ep, nested) == "teams/blue"
    assert thumbs.folder_of("fal-ai/other", default) == ""  # an endpoint the key does not name: no folder
    unprefixed = Thumbnails(Storage(Settings(s3_prefix="", _env_file=None), client=object()), 64)  # type: ignore[call-arg,arg-type]
    assert unprefixed.key(default) == f"_thumbs/64/{'ab' * 32}.jpg"


def test_refusal_messages_say_what_and_how_long() -> None:
    assert Refused("address", 900).message == ("Too many failed sign-in attempts from this address. "
                                               "Try again in 15 minutes.")
    assert Refused("key", 61).message == "Too many failed sign-in attempts with this key. Try again in 2 minutes."
    assert Refused("key", 5).message.endswith("Try again in 1 minute.")
