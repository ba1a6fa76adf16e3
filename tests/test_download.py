"""fedhar.data.download against a local HTTP server (loopback only) serving fixture archives."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import shutil
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from fedhar.data import download as dl
from fedhar.errors import FedharError
from tests.fixtures.archives import build_archive, copy_archive, zip_members


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the fixture folder; counts requests; /truncated.zip promises more than it sends."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path.endswith("/truncated.zip"):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"PK\x03\x04 only the beginning")
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


class Server:
    def __init__(self, folder: Path):
        self.folder = folder
        handler = functools.partial(_Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.requests = []
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    srv = Server(folder)
    yield srv
    srv.stop()


@pytest.fixture
def dest(tmp_path):
    return tmp_path / "downloads"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pin(monkeypatch, name: str, archive: Path | None = None, **changes):
    """Pin the fixture archive's checksum (or the given fields) in place of the real one."""
    if archive is not None:
        changes.setdefault("sha256", sha(archive))
        changes.setdefault("size", archive.stat().st_size)
    source = dataclasses.replace(dl.SOURCES[name], **changes)
    monkeypatch.setitem(dl.SOURCES, name, source)
    return source


def serve(server, monkeypatch, name: str, pinned: bool = True) -> Path:
    """Serve the fixture archive of ``name``; pin its checksums (outer and nested) if asked."""
    archive = build_archive(name, server.folder)
    if pinned:
        with zipfile.ZipFile(archive) as zf:
            nested = {m: hashlib.sha256(zf.read(m)).hexdigest() for m in dl.SOURCES[name].nested}
        pin(monkeypatch, name, archive, nested=nested)
    monkeypatch.setenv(dl.MIRROR_ENV, server.url)
    return archive


def leftovers(dest: Path) -> list[str]:
    """Temporary names download() must never leave behind."""
    return sorted(
        p.name for p in dest.iterdir() if p.name.endswith(".part") or p.name.startswith(".")
    )


# -- the table of sources --------------------------------------------------------------------


def test_sources_keep_the_canonical_urls_and_honest_checksums():
    assert set(dl.SOURCES) == {
        "uci-har", "hapt", "hhar", "pamap2", "motionsense", "realworld", "usc-had"
    }
    for source in dl.SOURCES.values():
        assert source.url.startswith(("https://", "http://")) and source.filename.endswith(".zip")
        assert source.sha256 is None or len(source.sha256) == 64
        assert source.citation and source.licence
    assert dl.SOURCES["uci-har"].filename == "human+activity+recognition+using+smartphones.zip"
    assert dl.SOURCES["uci-har"].sha256.startswith("c00b8030")
    assert dl.SOURCES["hapt"].size == 79_596_192
    # no checksum is published for these: None, never a made-up value
    assert dl.SOURCES["motionsense"].sha256 is None and dl.SOURCES["realworld"].sha256 is None
    assert dl.SOURCES["usc-had"].sha256 is None
    assert dl.SOURCES["usc-had"].url == "http://sipi.usc.edu/had/USC-HAD.zip"


def test_mirror_replaces_the_folder_of_the_canonical_url(monkeypatch):
    source = dl.SOURCES["hhar"]
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    assert dl.fetch_url(source) == source.url
    monkeypatch.setenv(dl.MIRROR_ENV, "http://127.0.0.1:9/mirror/")
    expected = "http://127.0.0.1:9/mirror/heterogeneity%2Bactivity%2Brecognition.zip"
    assert dl.fetch_url(source) == expected


def test_unknown_dataset_is_a_clear_error(dest):
    with pytest.raises(FedharError, match="downloadable datasets: uci-har"):
        dl.download("nope", dest)


# -- fetch, verify, unpack -------------------------------------------------------------------


def test_uci_har_nested_zip_is_unpacked_to_the_reader_root(server, monkeypatch, dest, capsys):
    archive = serve(server, monkeypatch, "uci-har")
    root = dl.download("uci-har", dest)

    assert root == dest / "uci-har" == dl.dataset_root("uci-har", dest)
    # the published "UCI HAR Dataset/" folder is the root; the nested zip is not kept
    inner = zipfile.ZipFile(zipfile.ZipFile(archive).open("UCI HAR Dataset.zip"))
    published = inner.read("UCI HAR Dataset/train/y_train.txt")
    assert (root / "train" / "y_train.txt").read_bytes() == published
    assert (root / "test" / "Inertial Signals" / "total_acc_x_test.txt").is_file()
    assert (root / "UCI HAR Dataset.names").is_file()
    assert not (root / "UCI HAR Dataset.zip").exists() and not (root / "UCI HAR Dataset").exists()
    assert not list(root.rglob("__MACOSX")) and not list(root.rglob("._*"))
    # the verified archive stays for later, nothing temporary is left
    assert (dest / archive.name).read_bytes() == archive.read_bytes()
    assert leftovers(dest) == []
    assert server.requests == ["/" + "human%2Bactivity%2Brecognition%2Busing%2Bsmartphones.zip"]
    err = capsys.readouterr().err
    assert "SHA-256 verified" in err and "skipped 2 macOS metadata entries" in err
    assert "MB /" in err  # the progress line: bytes / total


def test_nested_checksum_is_checked_and_a_mismatch_unpacks_nothing(server, monkeypatch, dest):
    serve(server, monkeypatch, "uci-har")
    pin(monkeypatch, "uci-har", nested={"UCI HAR Dataset.zip": "0" * 64})
    expected = r"nested archive .*UCI HAR Dataset\.zip.*expected SHA-256 0{64}"
    with pytest.raises(FedharError, match=expected):
        dl.download("uci-har", dest)
    assert not (dest / "uci-har").exists() and leftovers(dest) == []


@pytest.mark.parametrize("name", sorted(dl.SOURCES))
def test_every_dataset_unpacks_where_its_reader_looks(server, monkeypatch, dest, name):
    serve(server, monkeypatch, name)
    root = dl.download(name, dest)
    assert root == dest / name
    assert all((root / marker).exists() for marker in dl.SOURCES[name].markers)
    assert leftovers(dest) == []
    try:
        from fedhar.data.registry import get_reader

        reader = get_reader(name)
    except ImportError:
        pytest.skip(f"the {name} reader is not written yet")
    located = reader.locate(dest)
    assert located is not None, f"the {name} reader does not find {root}"
    # the reader's root is the dataset folder or a published folder inside it (hhar)
    assert located == root or root in located.parents


def test_layouts_of_the_other_archives(server, monkeypatch, dest):
    for name in ("hhar", "pamap2", "motionsense", "realworld"):
        serve(server, monkeypatch, name)

    hhar = dl.download("hhar", dest)
    assert (hhar / "Activity recognition exp" / "Phones_gyroscope.csv").read_text().startswith(
        "Index,Arrival_Time,Creation_Time,x,y,z,User,Model,Device,gt\n"
    )
    assert zipfile.is_zipfile(hhar / "Still exp.zip")  # not used: kept as published

    pamap2 = dl.download("pamap2", dest)
    assert len((pamap2 / "Protocol" / "subject101.dat").read_text().split("\n")[0].split()) == 54
    assert (pamap2 / "Optional" / "subject101.dat").is_file() and (pamap2 / "readme.pdf").is_file()
    assert not (pamap2 / "PAMAP2_Dataset").exists()

    motion = dl.download("motionsense", dest)
    assert (motion / "A_DeviceMotion_data" / "wlk_7" / "sub_2.csv").is_file()
    assert not (motion / "__MACOSX").exists()

    realworld = dl.download("realworld", dest)
    assert zipfile.is_zipfile(realworld / "proband2" / "data" / "acc_sitting_csv.zip")


def test_a_wrapping_top_folder_is_hoisted_to_the_root(server, monkeypatch, dest):
    inner = build_archive("realworld", dest.parent / "plain")
    with zipfile.ZipFile(inner) as zf:
        wrapped = {f"realworld2016_dataset/{n}": zf.read(n) for n in zf.namelist()}
    (server.folder / inner.name).write_bytes(zip_members(wrapped))
    monkeypatch.setenv(dl.MIRROR_ENV, server.url)
    root = dl.download("realworld", dest)
    assert (root / "proband1" / "data" / "acc_walking_csv.zip").is_file()
    assert not (root / "realworld2016_dataset").exists()


def test_a_file_beside_and_inside_the_wrapper_is_kept_both_ways(server, monkeypatch, dest):
    inner = zip_members(
        {"PAMAP2_Dataset/Protocol/subject101.dat": b"1 0\n", "PAMAP2_Dataset/readme.pdf": b"new"}
    )
    served = server.folder / dl.SOURCES["pamap2"].filename
    served.write_bytes(zip_members({"readme.pdf": b"old", "PAMAP2_Dataset.zip": inner}))
    pin(monkeypatch, "pamap2", served, nested={"PAMAP2_Dataset.zip": None})
    monkeypatch.setenv(dl.MIRROR_ENV, server.url)
    root = dl.download("pamap2", dest)
    assert (root / "readme.pdf").read_bytes() == b"new"  # the dataset folder's own file
    assert (root / "readme.pdf.outer").read_bytes() == b"old"
    assert (root / "Protocol" / "subject101.dat").is_file()


def test_hapt_download_is_found_and_read_by_the_loader(server, monkeypatch, dest, tmp_path):
    serve(server, monkeypatch, "hapt")
    root = dl.download("hapt", dest)
    assert (root / "RawData" / "labels.txt").is_file() and (root / "activity_labels.txt").is_file()
    pytest.importorskip("fedhar.data.readers.hapt")
    from fedhar.data.loading import find_dataset, load

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDHAR_DATA_DIR", raising=False)
    assert find_dataset("hapt", data_dir=dest) == root
    prepared = load("hapt", data_dir=dest, cache=False)
    assert prepared.root == root and prepared.report.files_read > 0 and len(prepared.windows) > 0


def test_usc_had_download_is_unpinned_hoisted_and_read(
    server, monkeypatch, dest, tmp_path, capsys
):
    archive = serve(server, monkeypatch, "usc-had", pinned=False)  # as the real one: unpinned
    root = dl.download("usc-had", dest)
    assert root == dest / "usc-had" and not (root / "USC-HAD").exists()  # wrapper hoisted
    assert (root / "Subject2" / "a8t1.mat").is_file() and (root / "Readme.txt").is_file()
    err = capsys.readouterr().err
    assert f"SHA-256 of {archive.name} is {sha(archive)}: not verified" in err
    from fedhar.data.loading import find_dataset, load

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDHAR_DATA_DIR", raising=False)
    assert find_dataset("usc-had", data_dir=dest) == root
    prepared = load("usc-had", data_dir=dest, cache=False)
    assert prepared.report.files_read == 4
    assert prepared.windows.class_counts() == {"walking": 2, "sitting": 2}


def test_default_destination_is_the_download_dir(server, monkeypatch, tmp_path):
    serve(server, monkeypatch, "motionsense", pinned=False)
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    root = dl.download("motionsense", progress=False)
    assert root == tmp_path / "cache" / "data" / "motionsense"


# -- checksums -------------------------------------------------------------------------------


def test_checksum_mismatch_keeps_the_file_aside_and_unpacks_nothing(server, monkeypatch, dest):
    archive = serve(server, monkeypatch, "hapt", pinned=False)
    pin(monkeypatch, "hapt", sha256="ab" * 32, size=12345)
    with pytest.raises(FedharError) as info:
        dl.download("hapt", dest)
    message = str(info.value)
    assert "ab" * 32 in message and sha(archive) in message  # expected and actual
    bad = dest / (archive.name + ".bad")
    assert str(bad) in message
    assert bad.read_bytes() == archive.read_bytes()
    assert not (dest / archive.name).exists() and not (dest / "hapt").exists()
    assert leftovers(dest) == []


def test_unpinned_archive_prints_its_checksum_and_a_warning(server, monkeypatch, dest, capsys):
    archive = serve(server, monkeypatch, "motionsense", pinned=False)
    assert dl.SOURCES["motionsense"].sha256 is None
    dl.download("motionsense", dest, progress=False)
    err = capsys.readouterr().err
    assert sha(archive) in err and "not verified against a pinned checksum" in err
    assert "MB /" not in err  # progress=False: no progress line


# -- archives fetched by hand, re-runs ---------------------------------------------------------


def test_an_archive_already_present_is_verified_and_not_fetched(server, monkeypatch, dest, capsys):
    archive = build_archive("hapt", dest.parent / "elsewhere")
    pin(monkeypatch, "hapt", archive)
    copy_archive(archive, dest)
    monkeypatch.setenv(dl.MIRROR_ENV, server.url)  # serves nothing: any fetch would fail

    root = dl.download("hapt", dest)
    assert server.requests == []
    assert (root / "RawData" / "labels.txt").is_file()
    assert "SHA-256 verified" in capsys.readouterr().err

    assert dl.download("hapt", dest) == root  # unpacked already: nothing to do
    assert server.requests == []
    assert "already unpacked" in capsys.readouterr().err


def test_an_incomplete_folder_is_not_deleted_unless_forced(server, monkeypatch, dest):
    serve(server, monkeypatch, "hapt")
    root = dl.download("hapt", dest)
    (root / "RawData" / "labels.txt").unlink()  # damaged by hand: no longer complete
    expected = r"hapt exists but does not hold a complete hapt .*--force"
    with pytest.raises(FedharError, match=expected):
        dl.download("hapt", dest)
    assert (root / "RawData").is_dir()  # left as it was
    assert dl.download("hapt", dest, force=True) == root
    assert (root / "RawData" / "labels.txt").is_file()


def test_a_deleted_folder_is_rebuilt_from_the_kept_archive(server, monkeypatch, dest):
    serve(server, monkeypatch, "hapt")
    root = dl.download("hapt", dest)
    shutil.rmtree(root)
    assert dl.download("hapt", dest) == root
    assert (root / "RawData" / "labels.txt").is_file()
    assert len(server.requests) == 1  # the kept archive was used


def test_a_wrong_file_put_by_hand_is_set_aside_and_fetched_again(server, monkeypatch, dest, capsys):
    archive = serve(server, monkeypatch, "hapt")
    dest.mkdir()
    (dest / archive.name).write_bytes(b"an html error page saved as zip")
    root = dl.download("hapt", dest)
    assert (root / "RawData" / "labels.txt").is_file()
    assert len(server.requests) == 1
    assert (dest / (archive.name + ".bad")).read_bytes() == b"an html error page saved as zip"
    assert "moved aside, fetching again" in capsys.readouterr().err


def test_force_fetches_again_and_replaces_the_folder(server, monkeypatch, dest):
    serve(server, monkeypatch, "hapt")
    root = dl.download("hapt", dest)
    (root / "stale.txt").write_text("left from an older unpack")
    assert dl.download("hapt", dest, force=True) == root
    assert len(server.requests) == 2
    assert not (root / "stale.txt").exists() and (root / "RawData" / "labels.txt").is_file()
    assert leftovers(dest) == []


# -- network failures --------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


def test_unreachable_network_says_what_to_fetch_and_where_to_put_it(dest):
    url = f"http://127.0.0.1:{closed_port()}/hapt.zip"
    with pytest.raises(FedharError) as info:
        dl.download("hapt", dest, url=url)
    message = str(info.value)
    target = dest / dl.SOURCES["hapt"].filename
    assert url in message  # the URL tried
    assert dl.SOURCES["hapt"].url in message  # the canonical URL to fetch by hand
    assert str(target) in message  # the exact path to put the file at
    assert dl.SOURCES["hapt"].sha256 in message
    assert "re-run `fedhar data download hapt`" in message
    assert dl.manual_instructions("hapt", dest) in message
    assert not target.exists() and leftovers(dest) == []


def test_mirror_env_is_used_and_named_on_failure(monkeypatch, dest):
    mirror = f"http://127.0.0.1:{closed_port()}/m"
    monkeypatch.setenv(dl.MIRROR_ENV, mirror)
    expected = r"could not download motionsense from http://127\.0\.0\.1:\d+/m/A_DeviceMotion_data"
    with pytest.raises(FedharError, match=expected):
        dl.download("motionsense", dest)


def test_http_error_is_reported_with_the_status(server, dest):
    with pytest.raises(FedharError, match="HTTP 404"):
        dl.download("hapt", dest, url=server.url + "/missing.zip")
    assert leftovers(dest) == []


def test_a_truncated_transfer_leaves_no_archive(server, dest):
    with pytest.raises(FedharError, match="could not download hapt"):
        dl.download("hapt", dest, url=server.url + "/truncated.zip")
    assert not (dest / dl.SOURCES["hapt"].filename).exists()
    assert leftovers(dest) == []


# -- hostile or unexpected archives -------------------------------------------------------------


def test_member_paths_escaping_the_folder_are_refused(server, monkeypatch, dest):
    data = zip_members({"RawData/labels.txt": b"1 1 1 1 10\n", "../escaped.txt": b"x"})
    served = server.folder / dl.SOURCES["hapt"].filename
    served.write_bytes(data)
    pin(monkeypatch, "hapt", served)
    monkeypatch.setenv(dl.MIRROR_ENV, server.url)
    with pytest.raises(FedharError, match="unsafe member path '../escaped.txt'"):
        dl.download("hapt", dest)
    assert not (dest.parent / "escaped.txt").exists() and not (dest / "hapt").exists()
    assert leftovers(dest) == []


def test_an_archive_without_the_published_layout_is_refused(server, monkeypatch, dest):
    data = zip_members({"something/else.txt": b"x", "notes.txt": b"y"})
    served = server.folder / dl.SOURCES["hapt"].filename
    served.write_bytes(data)
    pin(monkeypatch, "hapt", served)
    monkeypatch.setenv(dl.MIRROR_ENV, server.url)
    expected = r"does not have the published layout: expected RawData/labels\.txt"
    with pytest.raises(FedharError, match=expected):
        dl.download("hapt", dest)
    assert not (dest / "hapt").exists() and leftovers(dest) == []


def test_a_file_that_is_not_a_zip_is_refused(server, monkeypatch, dest):
    (server.folder / dl.SOURCES["realworld"].filename).write_bytes(b"<html>moved</html>")
    monkeypatch.setenv(dl.MIRROR_ENV, server.url)
    with pytest.raises(FedharError, match="not a readable zip archive"):
        dl.download("realworld", dest)
    assert not (dest / "realworld").exists() and leftovers(dest) == []
