"""The LRA release archive: finding, extracting (safely, atomically) and downloading (with resume)."""

from __future__ import annotations

import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from lra.data.archives import ArchiveError, DownloadError, download, extract_tar
from lra.data.listops import load_listops, write_listops_tsv
from lra.data.lra_release import RELEASE_URL, release_root
from tests.lra_fixtures import add_bytes, write_aan_files, write_release_tar


@pytest.fixture(scope="module")
def release_tree(tmp_path_factory) -> Path:
    """An unpacked release in miniature: listops-1000/ and tsv_data/."""
    root = tmp_path_factory.mktemp("release") / "content"
    write_aan_files(root / "tsv_data", counts=(3, 2, 2))
    (root / "listops-1000").mkdir(parents=True)
    for split in ("train", "val", "test"):
        write_listops_tsv(root / "listops-1000" / f"basic_{split}.tsv",
                          ["( ( ( [MAX 2 ) 9 ) ] )", "( ( [SM 4 ) ] )"], [9, 4])
    return root


@pytest.fixture(scope="module")
def release_archive(release_tree, tmp_path_factory) -> Path:
    return write_release_tar(tmp_path_factory.mktemp("archive") / "lra_release.gz", release_tree)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name or p.name.endswith(".part"))


@pytest.mark.parametrize("level", ["", "lra_release", "lra_release/lra_release", "tsv_data"])
def test_release_dir_found_at_any_level(release_tree, tmp_path, level):
    top = tmp_path / "unpacked"
    inner = top.joinpath(*level.split("/")) if level not in ("", "tsv_data") else top
    inner.parent.mkdir(parents=True, exist_ok=True)
    inner.symlink_to(release_tree, target_is_directory=True)
    given = top / "tsv_data" if level == "tsv_data" else top
    root = release_root({"release_dir": str(given)}, tmp_path / "data", needs="tsv_data")
    assert (root / "tsv_data" / "new_aan_pairs.train.tsv").is_file()


def test_missing_release_names_the_key_and_the_url(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"task\.release_dir=.*no tsv_data/.*lra_release\.gz"):
        release_root({"release_dir": str(tmp_path)}, tmp_path / "data", needs="tsv_data")
    with pytest.raises(FileNotFoundError, match=r"task\.download=false.*" + RELEASE_URL.replace(".", r"\.")):
        release_root({"download": False}, tmp_path / "data", needs="tsv_data")
    with pytest.raises(FileNotFoundError, match=r"task\.release_archive=.*does not exist"):
        release_root({"release_archive": str(tmp_path / "nope.gz")}, tmp_path / "data", needs="tsv_data")


def test_archive_extracts_only_the_needed_folder_once(release_archive, tmp_path):
    data = tmp_path / "data"
    root = release_root({"release_archive": str(release_archive)}, data, needs="tsv_data", progress=False)
    assert root == data / "lra_release" / "extracted-tsv_data" / "lra_release"
    assert sorted(p.name for p in (root / "tsv_data").iterdir()) == [
        "new_aan_pairs.eval.tsv", "new_aan_pairs.test.tsv", "new_aan_pairs.train.tsv"]
    assert not (root / "listops-1000").exists()  # only members under tsv_data/ are unpacked
    # A second call finds the extraction without the archive.
    assert release_root({"release_archive": str(tmp_path / "gone.gz")}, data, needs="tsv_data") == root
    with pytest.raises(FileNotFoundError, match="holds no pathfinder32/"):
        release_root({"release_archive": str(release_archive)}, data, needs="pathfinder32", progress=False)
    assert not (data / "lra_release" / "extracted-pathfinder32").exists()
    assert _leftovers(data) == []


def test_listops_release_source_reads_from_the_archive(release_archive, tmp_path):
    cache = load_listops({"name": "listops", "source": "release", "release_archive": str(release_archive)},
                         tmp_path / "data", progress=False)
    assert [len(cache[s]) for s in ("train", "val", "test")] == [2, 2, 2]
    assert cache.manifest["source"]["kind"] == "release"


def _evil_archive(path: Path, member: str, kind: str = "file", link: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        add_bytes(tar, "lra_release/tsv_data/ok.tsv", b"fine")
        info = tarfile.TarInfo(member)
        if kind == "file":
            tar.addfile(info, io.BytesIO(b""))
        else:
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            info.linkname = link
            tar.addfile(info)
    return path


@pytest.mark.parametrize("member,kind,link", [
    ("lra_release/tsv_data/../../../escape.txt", "file", ""),
    ("/tmp/absolute.txt", "file", ""),
    ("lra_release/tsv_data/up", "symlink", "../../../.."),
    ("lra_release/tsv_data/root", "symlink", "/etc/passwd"),
    ("lra_release/tsv_data/hard", "hardlink", "../outside"),
    ("lra_release/tsv_data/pipe", "fifo", ""),
])
def test_escaping_members_are_refused_and_nothing_is_left(tmp_path, member, kind, link):
    archive = _evil_archive(tmp_path / "evil.gz", member, kind, link)
    target = tmp_path / "out" / "extracted"
    with pytest.raises(ArchiveError, match=rf"evil\.gz: .*member {member!r}.*refused"):
        extract_tar(archive, target, progress=False)
    assert not target.exists() and list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


def test_corrupt_archive_names_the_file_and_leaves_nothing(release_archive, tmp_path):
    broken = tmp_path / "lra_release.gz"
    broken.write_bytes(release_archive.read_bytes()[:300])
    with pytest.raises(ArchiveError, match=r"lra_release\.gz: cannot be read"):
        release_root({"release_archive": str(broken)}, tmp_path / "data", needs="tsv_data", progress=False)
    assert not (tmp_path / "data" / "lra_release" / "extracted-tsv_data").exists()
    assert _leftovers(tmp_path / "data") == []


# --------------------------------------------------------------------------- #
# Download with resume, against a local HTTP server
# --------------------------------------------------------------------------- #

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


class _Handler(http.server.BaseHTTPRequestHandler):
    ranges: list = []
    cut_after: int | None = None  # send only this many bytes of the body, then drop the connection
    honour_range = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path != "/lra_release.gz":
            self.send_error(404, "no such file")
            return
        header = self.headers.get("Range")
        type(self).ranges.append(header)
        start = int(header.split("=")[1].split("-")[0]) if header and self.honour_range else 0
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = type(self).cut_after
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()
        if cut is not None:
            self.close_connection = True


@pytest.fixture
def server():
    handler = type("Handler", (_Handler,), {"ranges": [], "cut_after": None, "honour_range": True})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    handler, base = server
    dest = tmp_path / "dl" / "lra_release.gz"
    handler.cut_after = 3000
    with pytest.raises(DownloadError, match="interrupted.*run again"):
        download(f"{base}/lra_release.gz", dest, progress=False, timeout=5)
    assert not dest.exists() and (tmp_path / "dl" / "lra_release.gz.part").stat().st_size == 3000
    handler.cut_after = None
    assert download(f"{base}/lra_release.gz", dest, progress=False, timeout=5) == dest
    assert dest.read_bytes() == PAYLOAD and handler.ranges == [None, "bytes=3000-"]
    assert _leftovers(tmp_path) == []


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    handler, base = server
    handler.honour_range = False
    dest = tmp_path / "lra_release.gz"
    (tmp_path / "lra_release.gz.part").write_bytes(b"stale bytes")
    download(f"{base}/lra_release.gz", dest, progress=False, expected_bytes=len(PAYLOAD), timeout=5)
    assert dest.read_bytes() == PAYLOAD


def test_http_errors_name_the_url(server, tmp_path):
    _, base = server
    with pytest.raises(DownloadError, match=r"/missing\.gz failed: HTTP 404"):
        download(f"{base}/missing.gz", tmp_path / "x.gz", progress=False, timeout=5)
    with pytest.raises(DownloadError, match="announces 10240 bytes, expected 5$"):
        download(f"{base}/lra_release.gz", tmp_path / "y.gz", progress=False, expected_bytes=5, timeout=5)
    assert not (tmp_path / "x.gz").exists() and not (tmp_path / "y.gz").exists()


def test_release_root_downloads_then_extracts(server, release_archive, tmp_path):
    handler, base = server
    global PAYLOAD
    saved, PAYLOAD = PAYLOAD, release_archive.read_bytes()
    try:
        root = release_root({"download": True, "release_url": f"{base}/lra_release.gz"}, tmp_path / "data",
                            needs="tsv_data", progress=False)
    finally:
        PAYLOAD = saved
    assert (tmp_path / "data" / "downloads" / "lra_release.gz").is_file()
    assert (root / "tsv_data" / "new_aan_pairs.test.tsv").is_file()
