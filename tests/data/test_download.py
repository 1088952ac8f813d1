"""The downloader without internet: a local HTTP server on 127.0.0.1 stands in for GitHub's raw file server.

Served files are the committed excerpts (with their own sha256 in a test table), so a good download can be
prepared by the builders; a corrupted file, a transfer cut short, a refused connection and a 404 each fail with
one line naming the URL and leave no file (and no partial file) under the final name."""

import hashlib
import http.server
import os
import pathlib
import socket
import subprocess
import sys
import threading

import pytest

from remix_jax.data import builders
from remix_jax.data import download as dl
from tests.conftest import REPO, TESTDATA

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class Mirror:
    """Serves ``files`` ({url path: bytes}); paths in ``cut`` announce their full length but stop halfway."""

    def __init__(self):
        self.files, self.cut, self.requests = {}, set(), []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                mirror.requests.append(self.path)
                body = mirror.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in mirror.cut else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, ds: dl.Dataset, f: dl.RemoteFile, body: bytes) -> str:
        path = f"/{ds.repo}/{ds.commit}/{f.path}"
        self.files[path] = body
        return path


def _pin(dest: str, path: str, body: bytes) -> dl.RemoteFile:
    return dl.RemoteFile(dest, path, hashlib.sha256(body).hexdigest(), len(body))


def _excerpt_table() -> tuple[dict[str, dl.Dataset], dict[tuple[str, str], bytes]]:
    """The pinned table's gsm8k / llm_adapters (ARC-Challenge) entries, pinned to the committed excerpts."""
    bodies, table = {}, {}
    for name, dests in {"gsm8k": ["train.jsonl", "test.jsonl"],
                        "llm_adapters": ["ARC-Challenge/train.json", "ARC-Challenge/test.json"]}.items():
        real = dl.DATASETS[name]
        files = []
        for dest in dests:
            upstream = next(f for f in real.files if f.dest == dest)
            bodies[name, dest] = (TESTDATA / name / dest).read_bytes()
            files.append(_pin(dest, upstream.path, bodies[name, dest]))
        lic = real.licence_file
        bodies[name, lic.dest] = (TESTDATA / name / lic.dest).read_bytes()
        table[name] = dl.Dataset(name, real.repo, real.commit, real.licence,
                                 _pin(lic.dest, lic.path, bodies[name, lic.dest]), tuple(files), real.builders)
    return table, bodies


@pytest.fixture
def mirror(monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    m = Mirror()
    yield m
    m.server.shutdown()
    m.server.server_close()


def _serve(mirror, table, bodies):
    for (name, dest), body in bodies.items():
        ds = table[name]
        f = next(f for f in (*ds.files, ds.licence_file) if f.dest == dest)
        mirror.add(ds, f, body)


def _files_under(d: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def test_download_lays_out_manual_dirs(mirror, tmp_path):
    table, bodies = _excerpt_table()
    _serve(mirror, table, bodies)
    out, lines = tmp_path / "data", []
    folders = dl.download(["gsm8k", "llm_adapters"], out, base_url=mirror.url, datasets=table, log=lines.append)
    assert folders == {"gsm8k": out / "gsm8k", "llm_adapters": out / "llm_adapters"}
    assert _files_under(out) == sorted(f"{n}/{d}" for n, d in bodies)
    for (name, dest), body in bodies.items():
        assert (out / name / dest).read_bytes() == body
    assert sorted(mirror.requests) == sorted(f"/{table[n].repo}/{table[n].commit}/{f.path}" for n in table
                                             for f in (*table[n].files, table[n].licence_file))
    assert f"  licence: {table['gsm8k'].licence} ({out / 'gsm8k' / 'LICENSE'})" in lines
    # the folders are the builders' manual_dir as they are
    gsm = builders.prepare("gsm8k", data_dir=tmp_path / "tfds", manual_dir=folders["gsm8k"])
    arc = builders.prepare("llm_adapters/arc_challenge", data_dir=tmp_path / "tfds",
                           manual_dir=folders["llm_adapters"])
    assert {s: len(d) for s, d in gsm.as_data_source().items()} == {"train": 300, "test": 250}
    assert {s: len(d) for s, d in arc.as_data_source().items()} == {"train": 100, "test": 206}
    # a second run finds every file in place and fetches nothing
    mirror.requests.clear()
    lines.clear()
    dl.download(["gsm8k"], out, base_url=mirror.url, datasets=table, log=lines.append)
    assert mirror.requests == [] and sum("(already present)" in x for x in lines) == 3


def test_corrupted_file_is_refused_and_the_old_file_kept(mirror, tmp_path):
    table, bodies = _excerpt_table()
    _serve(mirror, table, bodies)
    f = table["gsm8k"].files[1]
    url_path = mirror.add(table["gsm8k"], f, bodies["gsm8k", "test.jsonl"].replace(b"#### 18", b"#### 19"))
    dest = tmp_path / "data" / "gsm8k" / "test.jsonl"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"an older file\n")
    with pytest.raises(dl.DownloadError) as e:
        dl.download(["gsm8k"], tmp_path / "data", base_url=mirror.url, datasets=table, log=lambda _: None)
    assert str(e.value) == (f"{mirror.url}{url_path}: checksum mismatch: got sha256 "
                            f"{hashlib.sha256(mirror.files[url_path]).hexdigest()} ({f.size} bytes), expected "
                            f"{f.sha256} ({f.size} bytes)")
    assert dest.read_bytes() == b"an older file\n"
    assert _files_under(tmp_path / "data") == ["gsm8k/test.jsonl", "gsm8k/train.jsonl"]  # no partial file


def test_interrupted_download_leaves_no_file(mirror, tmp_path):
    table, bodies = _excerpt_table()
    _serve(mirror, table, bodies)
    f = table["gsm8k"].files[0]
    url_path = f"/{table['gsm8k'].repo}/{table['gsm8k'].commit}/{f.path}"
    mirror.cut.add(url_path)
    with pytest.raises(dl.DownloadError, match=rf"^{mirror.url}{url_path}: download interrupted after "
                                               rf"{f.size // 2} of {f.size} bytes$"):
        dl.download(["gsm8k"], tmp_path / "data", base_url=mirror.url, datasets=table, log=lambda _: None)
    assert _files_under(tmp_path / "data") == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_network_errors(mirror, tmp_path):
    table, _ = _excerpt_table()  # nothing served: every path is a 404
    with pytest.raises(dl.DownloadError, match=r"/train\.jsonl: HTTP 404 "):
        dl.download(["gsm8k"], tmp_path, base_url=mirror.url, datasets=table, log=lambda _: None)
    port = _closed_port()
    with pytest.raises(dl.DownloadError, match=rf"^http://127\.0\.0\.1:{port}/openai/.*: network error: "):
        dl.download(["gsm8k"], tmp_path, base_url=f"http://127.0.0.1:{port}", datasets=table,
                    log=lambda _: None)
    with pytest.raises(dl.DownloadError, match="unknown dataset.*'mmlu'.*known: gsm8k, llm_adapters"):
        dl.download(["gsm8k", "mmlu"], tmp_path, datasets=table)
    assert _files_under(tmp_path) == []


def _command(base_url, out, names="gsm8k"):
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    return subprocess.run([sys.executable, "-m", "remix_jax.data", f"--download={names}", f"--out={out}",
                           f"--base_url={base_url}"], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=120)


def test_command_line_fails_with_one_line(mirror, tmp_path):
    """The pinned table through the command: a file that is not the pinned one, then no server at all."""
    ds = dl.DATASETS["gsm8k"]
    for f in (*ds.files, ds.licence_file):
        mirror.add(ds, f, (TESTDATA / "gsm8k" / f.dest).read_bytes())  # excerpts, not the pinned full files
    out = _command(mirror.url, tmp_path / "data")
    train = ds.files[0]
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"error: {mirror.url}/{ds.repo}/{ds.commit}/{train.path}: checksum mismatch: got sha256 "
        f"{hashlib.sha256((TESTDATA / 'gsm8k/train.jsonl').read_bytes()).hexdigest()} (171168 bytes), expected "
        f"{train.sha256} ({train.size} bytes)"]
    assert out.stdout.splitlines() == [f"gsm8k: {ds.repo}@{ds.commit} -> {tmp_path / 'data' / 'gsm8k'}"]
    assert _files_under(tmp_path / "data") == []
    port = _closed_port()
    out = _command(f"http://127.0.0.1:{port}", tmp_path / "data", "llm_adapters,gsm8k")
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1
    first = f"http://127.0.0.1:{port}/AGI-Edgerunners/LLM-Adapters/{dl.DATASETS['llm_adapters'].commit}"
    assert out.stderr.startswith(f"error: {first}/dataset/ARC-Challenge/train.json: network error: ")


def test_pinned_table_is_the_builders_layout():
    """Every pinned file sits where a builder's manual_dir expects one, at a full commit of GitHub."""
    for ds in dl.DATASETS.values():
        assert len(ds.commit) == 40 and int(ds.commit, 16) >= 0 and ds.licence_file.dest.endswith("LICENSE")
        expected = set()
        for name in ds.builders:
            builder, _, config = name.partition("/")
            cfg = next(c for c in builders.BUILDERS[builder].BUILDER_CONFIGS if c.name == (config or "default"))
            expected |= {rel for _, rel in cfg.default_files}
        assert {f.dest for f in ds.files} == expected, ds.name
        assert all(len(f.sha256) == 64 and f.size > 0 for f in (*ds.files, ds.licence_file))
    assert dl.file_url(dl.DEFAULT_BASE_URL, dl.DATASETS["gsm8k"], dl.DATASETS["gsm8k"].files[0]) == (
        "https://raw.githubusercontent.com/openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c/"
        "grade_school_math/data/train.jsonl")
    assert set(dl.DATASETS) == {"gsm8k", "llm_adapters", "code_alpaca"}
