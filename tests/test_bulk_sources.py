"""The bulk command's parts without a server: sources, sinks, and the run against a mock transport."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from gateway.bulk import BulkRun, RunOptions
from gateway.bulk_sinks import Existing, JsonlSink, ParquetSink, Row, read_output
from gateway.bulk_sources import BadInput, Entry, Prepared, SourceOptions, count, entries
from gateway.bulk_targets import RemoteTarget


def png(color: tuple[int, int, int], size: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format="PNG")
    return out.getvalue()


def image_hash(data: bytes) -> str:
    """The definition, written out: sha256 over `i` + sha256(image bytes)."""
    return hashlib.sha256(b"i" + hashlib.sha256(data).digest()).hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(b"t" + hashlib.sha256(text.encode()).digest()).hexdigest()


def load(entry: Entry) -> Prepared | str:
    try:
        return entry.load()
    except BadInput as exc:
        return exc.reason


def test_folder_lists_recursively_and_reports_bad_files(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    red = png((255, 0, 0))
    (root / "red.png").write_bytes(red)
    (root / "sub" / "note.txt").write_text("a photo of a cat")
    (root / "fake.jpg").write_bytes(b"this is not a jpeg")
    (root / "big.png").write_bytes(red + b"\0" * 2000)
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "gone.png").symlink_to(tmp_path / "missing.png")
    os.mkfifo(root / "pipe.txt")
    (root / "folder.png").mkdir()  # a directory named like an image is a folder, walked, not an item
    (root / "ignored.bin").write_bytes(b"\0")

    listed = list(entries([root], SourceOptions(max_file_bytes=1000)))
    assert count([root]) == len(listed) == 7
    outcome = {Path(e.id).name: load(e) for e in listed}
    good = outcome.pop("red.png")
    assert isinstance(good, Prepared)
    assert good.content_hash == image_hash(red)
    uri = good.element["image"]
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.partition(",")[2]) == red  # the exact file bytes, so the gateway hashes those
    note = outcome.pop("note.txt")
    assert note == Prepared("a photo of a cat", text_hash("a photo of a cat"))
    assert outcome["fake.jpg"].startswith("not an image")
    assert outcome["big.png"].startswith("too large")
    assert outcome["latin1.txt"].startswith("not UTF-8 text")
    assert outcome["gone.png"].startswith("unreadable")
    assert outcome["pipe.txt"] == "not a regular file"


def test_jsonl_and_csv_sources(tmp_path: Path) -> None:
    red = png((255, 0, 0))
    uri = "data:image/png;base64," + base64.b64encode(red).decode()
    lines = [
        {"id": "t1", "text": "hello world"},
        {"id": "i1", "image": uri},
        {"id": "m1", "content": [{"text": "a cat"}, {"image": uri}]},
        {"id": "u1", "input": {"image": "http://127.0.0.1:9/cat.png"}},
        {"id": "bad", "text": "x", "image": uri},
    ]
    source = tmp_path / "items.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n{not json\n\n")
    listed = list(entries([source], SourceOptions()))
    assert [e.id for e in listed] == ["t1", "i1", "m1", "u1", "bad", f"{source}#6"]
    assert count([source]) == 6
    outcome = [load(e) for e in listed]
    assert outcome[0] == Prepared({"text": "hello world"}, text_hash("hello world"))
    assert outcome[1] == Prepared({"image": uri}, image_hash(red))
    expected = hashlib.sha256(
        b"t" + hashlib.sha256(b"a cat").digest() + b"i" + hashlib.sha256(red).digest()
    ).hexdigest()
    assert isinstance(outcome[2], Prepared)
    assert outcome[2].content_hash == expected
    assert outcome[3] == Prepared({"image": "http://127.0.0.1:9/cat.png"}, None)  # fetched by the gateway
    assert "exactly one of 'text' or 'image'" in str(outcome[4])
    assert str(outcome[5]).startswith("not JSON")

    table = tmp_path / "rows.csv"
    table.write_text('id,text\nr1,"first, with a comma"\n,second\nr3,\n')
    rows = list(entries([table], SourceOptions()))
    assert [r.id for r in rows] == ["r1", f"{table}#2", "r3"]
    assert count([table]) == 3
    assert [load(r) for r in rows][:2] == [
        Prepared("first, with a comma", text_hash("first, with a comma")),
        Prepared("second", text_hash("second")),
    ]
    assert "empty string" in str(load(rows[2]))


def rows(ids: list[str], dimension: int = 4) -> list[Row]:
    rng = np.random.default_rng(len(ids))
    return [Row(i, text_hash(i), "m", rng.standard_normal(dimension).astype(np.float32)) for i in ids]


def test_jsonl_sink_cuts_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = JsonlSink(path)
    first = rows(["a", "b"])
    sink.write(first)
    with path.open("ab") as file:
        file.write(b'{"id":"c","content_hash":null,"mo')  # killed mid-write
    resumed = JsonlSink(path)
    assert resumed.existing().ids == {"a", "b"}
    resumed.write(rows(["c"]))
    back = read_output(path)
    assert [r["id"] for r in back] == ["a", "b", "c"]
    assert np.array_equal(np.asarray(back[0]["embedding"], dtype=np.float32), first[0].embedding)
    assert back[1]["dimension"] == 4
    assert back[1]["content_hash"] == text_hash("b")


def test_parquet_sink_parts_are_whole_or_absent(tmp_path: Path) -> None:
    path = tmp_path / "out"
    sink = ParquetSink(path, flush_rows=2)
    assert sink.existing().ids == set()
    written = rows(["a", "b", "c"])
    sink.write(written[:1])
    assert not list(path.glob("part-*"))  # buffered until flush_rows
    sink.write(written[1:])
    (path / ".part-000007.parquet.tmp").write_bytes(b"PAR1 half a file")  # a kill mid-part
    resumed = ParquetSink(path, flush_rows=2)
    assert resumed.existing() == Existing({"a", "b", "c"}, {"m"})
    assert not list(path.glob(".part-*"))
    resumed.write(rows(["d"]))
    resumed.close()
    assert sorted(p.name for p in path.iterdir()) == ["part-000000.parquet", "part-000001.parquet"]
    back = {r["id"]: r for r in read_output(path)}
    assert sorted(back) == ["a", "b", "c", "d"]
    assert np.array_equal(np.asarray(back["c"]["embedding"], dtype=np.float32), written[2].embedding)


async def test_run_waits_out_overload_and_drops_only_the_rejected_item(tmp_path: Path) -> None:
    """503 with Retry-After is retried; a 400 naming input[1] fails that item alone; the rest are written."""
    sent: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        inputs = json.loads(request.content)["input"]
        sent.append(inputs)
        if len(sent) == 1:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"error": {"message": "busy"}})
        if "poison" in inputs:
            i = inputs.index("poison")
            return httpx.Response(400, json={"error": {"message": f"input[{i}] is bad", "param": f"input[{i}]"}})
        data = [
            {"index": k, "embedding": base64.b64encode(np.full(4, 0.5, "<f4").tobytes()).decode()}
            for k in range(len(inputs))
        ]
        return httpx.Response(200, json={"data": data}, headers={"X-Cache-Hits": "1"})

    texts = ["one", "poison", "three"]
    items = [Entry(t, t, lambda t=t: Prepared(t, text_hash(t))) for t in texts]  # type: ignore[misc]
    sink = JsonlSink(tmp_path / "out.jsonl")
    target = RemoteTarget(["http://gw"], "m", transport=httpx.MockTransport(handler))
    run = BulkRun(sink, target, RunOptions(model="m", batch_size=8, concurrency=1, backoff_s=0), Existing({"zero"}))
    tally = await run.run([Entry("zero", "zero", lambda: Prepared("zero", None)), *items])
    await target.aclose()
    assert sent == [texts, texts, ["one", "three"]]
    assert (tally.done, tally.skipped, tally.cache_hits) == (2, 1, 1)
    assert [(f.id, f.reason) for f in tally.failures] == [("poison", "item is bad")]
    assert [r["id"] for r in read_output(tmp_path / "out.jsonl")] == ["one", "three"]


@pytest.mark.parametrize(("status", "outcome"), [(404, "HTTP 404: no such model"), (401, "HTTP 401: no such model")])
async def test_a_request_level_error_stops_the_run(tmp_path: Path, status: int, outcome: str) -> None:
    from gateway.bulk_targets import Fatal

    transport = httpx.MockTransport(lambda _: httpx.Response(status, json={"error": {"message": "no such model"}}))
    target = RemoteTarget(["http://gw"], "m", transport=transport)
    run = BulkRun(JsonlSink(tmp_path / "o.jsonl"), target, RunOptions(model="m"), Existing())
    with pytest.raises(Fatal, match=outcome):
        await run.run([Entry("a", "a", lambda: Prepared("a", None))])
    await target.aclose()
