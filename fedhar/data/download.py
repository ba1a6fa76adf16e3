"""`fedhar data download`: fetch a dataset's published archive, verify it, unpack it.

Steps, each safe to interrupt and re-run:
  1. stream the archive from its canonical URL to ``<dest>/<file>.part`` (a progress line
     shows bytes / total) and rename it to ``<dest>/<file>`` once complete;
  2. verify its SHA-256 against the pinned value in ``SOURCES``; on a mismatch the file is
     moved aside to ``<file>.bad`` and nothing is unpacked. Where no checksum is known the
     computed one is printed with a warning instead (checksums are never invented);
  3. unpack it, nested zips included, into a temporary folder under ``<dest>`` and move
     that folder into place as ``<dest>/<name>`` in one rename, so a half-unpacked
     dataset is never visible to the readers.
An archive already at ``<dest>/<file>`` is verified and used without fetching: a machine
without internet gets a dataset by copying the file there by hand (the error raised when
the network is unreachable says which URL, which path) and re-running the command.
The archive is kept after unpacking, so a deleted dataset folder is rebuilt without a new
fetch; ``force=True`` fetches the archive again and replaces the folder.

Where things go (``<dest>`` defaults to ``fedhar.data.paths.download_dir()``, one of the
directories ``fedhar.data.loading.find_dataset`` searches). Every dataset unpacks to its
own folder ``<dest>/<name>``, which is, or holds, the root its reader locates:

| dataset     | <dest>/<name> holds                      | reader root                    |
|-------------|------------------------------------------|--------------------------------|
| uci-har     | train/, test/, activity_labels.txt ...   | uci-har                        |
| hapt        | RawData/, activity_labels.txt ...        | hapt                           |
| hhar        | Activity recognition exp/, Still exp.zip | hhar/Activity recognition exp  |
| pamap2      | Protocol/, Optional/, readme.pdf ...     | pamap2                         |
| motionsense | A_DeviceMotion_data/<act>_<trial>/       | motionsense                    |
| realworld   | proband1/ ... proband15/                 | realworld                      |
| usc-had     | Subject1/ ... Subject14/, Readme.txt     | usc-had                        |

Not downloadable (``NOT_DOWNLOADABLE``): wisdm, whose merged subset is not what UCI 507
publishes (its archive has the full dataset in another layout).

The archive keeps the name a browser gives it (``Source.filename``, e.g.
``human+activity+recognition+using+smartphones.zip`` for uci-har), so a file fetched by hand
needs no renaming.

What lies in ``<dest>/<name>`` is the published content, with three rules:
  * nested zips named in ``Source.nested`` are unpacked where they lie and not kept (the
    outer archive, kept, holds them); other nested zips (HHAR's ``Still exp.zip``,
    RealWorld's per-sensor ``*_csv.zip``) are copied as published;
  * when the marker files (``Source.markers``) are not at the top but inside one top-level
    folder (UCI-HAR's ``UCI HAR Dataset/``, PAMAP2's ``PAMAP2_Dataset/``, USC-HAD's
    ``USC-HAD/``), that folder's content is moved up one level, so the published folder
    itself is ``<dest>/<name>``.
    A file both beside and inside that folder is kept once if identical; if not, the
    inside one keeps the name and the other becomes ``<file>.outer`` (a note says so);
  * macOS resource-fork entries (``__MACOSX/``, ``.DS_Store``) are skipped and counted.
An archive without its markers at either place is refused (nothing unpacked), as is a
member path that is absolute or climbs out with ``..``.

Checksums (SHA-256) and where they come from; every pinned value was found, identical,
in at least two unrelated public repositories that download and verify these files:
  * uci-har outer c00b8030...1031 (61,005,872 bytes); its nested ``UCI HAR Dataset.zip``
    2045e435...eb0 (60,999,314 bytes), the same bytes as the older direct download
    ``machine-learning-databases/00240/UCI HAR Dataset.zip``.
  * hapt 4ac4ae06...eb09 (79,596,192 bytes).
  * pamap2 76b3580b...d352 (size not published alongside).
  * hhar: no checksum of the outer archive was found. Its nested ``Activity recognition
    exp.zip`` is pinned to d4c0c53b...6582, the checksum published for the same file at
    the older direct URL ``machine-learning-databases/00344/Activity recognition exp.zip``
    (UCI's static archives wrap the original files byte for byte, as UCI-HAR's shows; if
    that inference ever fails, the error names the nested file and both checksums).
  * motionsense, realworld, usc-had: no published checksum found; the computed one is
    printed.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from fedhar import __version__
from fedhar.data import paths
from fedhar.errors import FedharError

#: base URL that replaces every canonical URL's folder (tests, local mirrors): the archive
#: is then fetched from ``$FEDHAR_DOWNLOAD_MIRROR/<file name>``
MIRROR_ENV = "FEDHAR_DOWNLOAD_MIRROR"
CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class Source:
    """Where a dataset's archive comes from and how it unpacks.

    sha256/size: of the archive file, None where no published value was found.
    nested: zip members unpacked in place -> their pinned SHA-256 (or None).
    markers: paths under ``<dest>/<name>`` that prove a complete unpack.
    """

    name: str
    url: str
    sha256: str | None
    size: int | None
    markers: tuple[str, ...]
    nested: dict[str, str | None] = field(default_factory=dict)
    licence: str = ""
    citation: str = ""
    note: str = ""

    @property
    def filename(self) -> str:
        """The name a browser saves the canonical URL under."""
        return urllib.parse.unquote(PurePosixPath(urllib.parse.urlsplit(self.url).path).name)


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            name="uci-har",
            url="https://archive.ics.uci.edu/static/public/240/"
            "human+activity+recognition+using+smartphones.zip",
            sha256="c00b803081a5c797cd5e4b83700a9810b38d53d9d84e01917e090e1fdbc81031",
            size=61_005_872,
            markers=("train/y_train.txt", "test/y_test.txt"),
            nested={
                "UCI HAR Dataset.zip": "2045e435c955214b38145fb5fa00776c72814f01b203fec405152dac7d5bfeb0"
            },
            licence="CC BY 4.0 (UCI); the dataset README prohibits commercial use",
            citation="Anguita, Ghio, Oneto, Parra, Reyes-Ortiz, 'A Public Domain Dataset for "
            "Human Activity Recognition Using Smartphones', ESANN 2013. doi:10.24432/C54S4K",
            note="outer zip: 'UCI HAR Dataset.names' + nested 'UCI HAR Dataset.zip'",
        ),
        Source(
            name="hapt",
            url="https://archive.ics.uci.edu/static/public/341/"
            "smartphone+based+recognition+of+human+activities+and+postural+transitions.zip",
            sha256="4ac4ae064227c07045a99551876b54d204837e995e298b6488559e209b3deb09",
            size=79_596_192,
            markers=("RawData/labels.txt",),
            licence="CC BY 4.0 (UCI); the dataset README prohibits commercial use",
            citation="Reyes-Ortiz, Oneto, Sama, Parra, Anguita, 'Transition-Aware Human "
            "Activity Recognition Using Smartphones', Neurocomputing 2016. doi:10.24432/C54G7M",
            note="RawData/, Train/, Test/, activity_labels.txt, features*.txt, README.txt",
        ),
        Source(
            name="hhar",
            url="https://archive.ics.uci.edu/static/public/344/heterogeneity+activity+recognition.zip",
            sha256=None,
            size=None,
            markers=("Activity recognition exp/Phones_accelerometer.csv",),
            nested={
                "Activity recognition exp.zip": "d4c0c53b195b523859bf71f5a349d164c7a604a321ff6b0972fbed6e03b46582"
            },
            licence="CC BY 4.0 (UCI)",
            citation="Stisen et al., 'Smart Devices are Different: Assessing and Mitigating "
            "Mobile Sensing Heterogeneities for Activity Recognition', SenSys 2015. "
            "doi:10.24432/C5689X",
            note="outer zip: nested 'Activity recognition exp.zip' (unpacked) and "
            "'Still exp.zip' (kept as is: not used)",
        ),
        Source(
            name="pamap2",
            url="https://archive.ics.uci.edu/static/public/231/pamap2+physical+activity+monitoring.zip",
            sha256="76b3580bd5a804121f507717cb498c66a312ef5c774f4a78ac470e6558add352",
            size=None,
            markers=("Protocol/subject101.dat",),
            nested={"PAMAP2_Dataset.zip": None},
            licence="CC BY 4.0 (UCI)",
            citation="Reiss, Stricker, 'Introducing a New Benchmarked Dataset for Activity "
            "Monitoring', ISWC 2012. doi:10.24432/C5NW2H",
            note="outer zip: readme.pdf + nested 'PAMAP2_Dataset.zip' (PAMAP2_Dataset/Protocol, "
            "Optional)",
        ),
        Source(
            name="motionsense",
            url="https://github.com/mmalekzadeh/motion-sense/raw/master/data/A_DeviceMotion_data.zip",
            sha256=None,
            size=None,
            markers=("A_DeviceMotion_data",),
            licence="Open Data Commons ODbL v1.0 (repository LICENSE)",
            citation="Malekzadeh, Clegg, Cavallaro, Haddadi, 'Mobile Sensor Data Anonymization', "
            "IoTDI 2019",
            note="A_DeviceMotion_data/<activity>_<trial>/sub_<n>.csv (+ __MACOSX/, skipped)",
        ),
        Source(
            name="realworld",
            url="http://wifo5-14.informatik.uni-mannheim.de/sensor/dataset/realworld2016/"
            "realworld2016_dataset.zip",
            sha256=None,
            size=None,
            markers=("proband1/data",),
            licence="research use, see the dataset page of the University of Mannheim",
            citation="Sztyler, Stuckenschmidt, 'On-body Localization of Wearable Devices: An "
            "Investigation of Position-Aware Activity Recognition', PerCom 2016",
            note="proband<N>/data/<sensor>_<activity>_csv.zip (inner zips kept as published)",
        ),
        Source(
            name="usc-had",
            url="http://sipi.usc.edu/had/USC-HAD.zip",
            sha256=None,
            size=None,
            markers=("Subject1/a1t1.mat",),
            licence="no licence stated in the archive (Readme.txt); see http://sipi.usc.edu/had/",
            citation="Zhang, Sawchuk, 'USC-HAD: A Daily Activity Dataset for Ubiquitous Activity "
            "Recognition Using Wearable Sensors', ACM UbiComp SAGAware workshop, 2012",
            note="USC-HAD/Subject<N>/a<activity>t<trial>.mat, Readme.txt, displayData_*.m",
        ),
    )
}


#: datasets fedhar reads but cannot fetch in the form it reads, and why
NOT_DOWNLOADABLE: dict[str, str] = {
    "wisdm": "fedhar reads a merged subset (wisdm/phone/data_<subject>_merged.csv, one acc+gyro CSV per "
    "subject) that UCI does not publish: UCI 507 (https://archive.ics.uci.edu/dataset/507) holds the full "
    "dataset in another layout (raw/phone/accel and raw/phone/gyro, separate files, checksum unknown). "
    "Put the merged files under <data dir>/wisdm/phone/",
}


def get_source(name: str) -> Source:
    if name in NOT_DOWNLOADABLE:
        raise FedharError(f"no download for {name!r}: {NOT_DOWNLOADABLE[name]}")
    try:
        return SOURCES[name]
    except KeyError:
        raise FedharError(
            f"no download known for {name!r}; downloadable datasets: {', '.join(SOURCES)}"
        ) from None


def archive_path(name: str, dest_dir: str | Path | None = None) -> Path:
    """Where the archive of ``name`` is (or must be put by hand)."""
    return _dest(dest_dir) / get_source(name).filename


def dataset_root(name: str, dest_dir: str | Path | None = None) -> Path:
    """The folder a completed download of ``name`` unpacks to."""
    return _dest(dest_dir) / get_source(name).name


def manual_instructions(name: str, dest_dir: str | Path | None = None) -> str:
    """How to install ``name`` by hand on a machine without internet access."""
    source = get_source(name)
    target = archive_path(name, dest_dir)
    lines = [
        f"  1. on a machine with internet, download {source.url}",
        f"  2. copy the file here, under exactly this name: {target}",
    ]
    if source.sha256:
        lines.append(f"     (its SHA-256 must be {source.sha256})")
    lines.append(
        f"  3. re-run `fedhar data download {name}` (the same --dest if one was given, no "
        "--force, which fetches again): the file is verified and unpacked without fetching."
    )
    return "\n".join(lines)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fetch_url(source: Source) -> str:
    """The canonical URL, or the same file name under ``$FEDHAR_DOWNLOAD_MIRROR``."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        return f"{mirror.rstrip('/')}/{urllib.parse.quote(source.filename)}"
    return source.url


def download(
    name: str,
    dest_dir: str | Path | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    url: str | None = None,
) -> Path:
    """Fetch, verify and unpack dataset ``name``; return its folder ``<dest>/<name>``.

    force: fetch the archive again and replace the dataset folder, even a complete one.
    url:   fetch from here instead of the canonical URL (mirrors, tests).
    """
    source = get_source(name)
    dest = _dest(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest / source.name
    if not force and _complete(root, source):
        _say(f"{name}: already unpacked at {root}")
        return root
    if not force and root.exists():
        # Never made by an interrupted download (the folder appears in one rename): it is
        # the user's, so it is not deleted without being asked to.
        raise FedharError(
            f"{root} exists but does not hold a complete {name} dataset (no "
            f"{', '.join(source.markers)}). Move it away, or re-run with --force to replace it."
        )

    archive = dest / source.filename
    if archive.exists() and not force:
        _say(f"{name}: using the archive already at {archive}")
        if not _verify(archive, source, quiet_mismatch=True):
            _say(f"{name}: it does not match the pinned checksum; moved aside, fetching again")
            archive = _fetch(source, dest, url or fetch_url(source), progress)
            _verify(archive, source)
    else:
        archive = _fetch(source, dest, url or fetch_url(source), progress)
        _verify(archive, source)

    _unpack(archive, source, root)
    _say(f"{name}: unpacked to {root}")
    return root


# -- fetching -----------------------------------------------------------------------------


def _fetch(source: Source, dest: Path, url: str, progress: bool) -> Path:
    """Stream ``url`` to ``<file>.part``, rename it to ``<file>`` once complete."""
    target = dest / source.filename
    part = target.with_name(target.name + ".part")
    request = urllib.request.Request(url, headers={"User-Agent": f"fedhar/{__version__}"})
    _say(f"{source.name}: fetching {url}")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except (ValueError, OSError, http.client.HTTPException) as exc:  # URLError is an OSError
        raise FedharError(_unreachable_message(source, url, target, exc)) from None
    with response, open(part, "wb") as out:
        length = _content_length(response)
        shown = _Progress(length or source.size, progress)
        received = 0
        while True:
            try:
                block = response.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:  # reset, timeout, truncation
                out.close()
                part.unlink(missing_ok=True)
                raise FedharError(_unreachable_message(source, url, target, exc)) from None
            if not block:
                break
            out.write(block)  # a local disk error here propagates as itself
            received += len(block)
            shown.update(received)
        shown.done(received)
    if length is not None and received != length:
        part.unlink(missing_ok=True)
        why = f"the connection closed after {received:,} of {length:,} bytes"
        raise FedharError(_unreachable_message(source, url, target, why))
    os.replace(part, target)
    return target


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


def _unreachable_message(source: Source, url: str, target: Path, why) -> str:
    if isinstance(why, urllib.error.HTTPError):
        reason = f"HTTP {why.code} {why.reason}"
    else:
        reason = getattr(why, "reason", why) or type(why).__name__
    return (
        f"could not download {source.name} from {url} ({reason}).\n"
        "If this machine has no internet access, fetch the archive by hand:\n"
        + manual_instructions(source.name, target.parent)
    )


class _Progress:
    """One progress line, bytes / total: rewritten in place on a terminal, every 10% else."""

    def __init__(self, total: int | None, enabled: bool):
        self.total = total
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.next_step = 0.0
        self.last_shown = -1

    def _line(self, received: int) -> str:
        if self.total:
            return f"  {_mb(received)} / {_mb(self.total)} ({100 * received / self.total:.0f}%)"
        return f"  {_mb(received)}"

    def update(self, received: int) -> None:
        if not self.enabled:
            return
        if self.tty:
            print("\r" + self._line(received), end="", file=sys.stderr, flush=True)
        elif self.total and received / self.total >= self.next_step:
            print(self._line(received), file=sys.stderr, flush=True)
            self.last_shown = received
            while self.next_step <= received / self.total:
                self.next_step += 0.1

    def done(self, received: int) -> None:
        if self.tty and self.enabled:
            print("\r" + self._line(received), file=sys.stderr, flush=True)
        elif self.enabled and self.last_shown != received:
            print(self._line(received), file=sys.stderr, flush=True)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# -- verifying ----------------------------------------------------------------------------


def _verify(archive: Path, source: Source, *, quiet_mismatch: bool = False) -> bool:
    """Check the archive's SHA-256; raise (or return False if quiet_mismatch) on a mismatch.

    A mismatching file is always moved aside to ``<file>.bad`` first.
    """
    actual = sha256_file(archive)
    if source.sha256 is None:
        _say(
            f"{source.name}: WARNING: SHA-256 of {archive.name} is {actual}: not verified "
            "against a pinned checksum (none is published for this archive)"
        )
        return True
    if actual == source.sha256:
        _say(f"{source.name}: SHA-256 verified ({actual[:16]}...)")
        return True
    size = archive.stat().st_size
    bad = archive.with_name(archive.name + ".bad")
    os.replace(archive, bad)
    if quiet_mismatch:
        return False
    expected_size = f" ({source.size:,} bytes expected)" if source.size else ""
    raise FedharError(
        f"{source.name}: checksum mismatch for {archive.name}: expected SHA-256 "
        f"{source.sha256}, got {actual} ({size:,} bytes{expected_size}). It was moved aside "
        f"to {bad} and not unpacked. Re-run to fetch it again; if the mismatch persists, the "
        f"file published at {source.url} has changed."
    )


# -- unpacking ----------------------------------------------------------------------------

_SKIPPED_PARTS = ("__MACOSX",)
_SKIPPED_NAMES = (".DS_Store",)


def _unpack(archive: Path, source: Source, root: Path) -> None:
    """Unpack into a temporary sibling of ``root``, then move it into place in one rename."""
    staging = Path(tempfile.mkdtemp(prefix=f".{source.name}.unpacking-", dir=root.parent))
    try:
        skipped = _extract_zip(archive, staging, source, str(archive))
        _hoist_if_wrapped(staging, source, archive)
        if skipped:
            _say(f"{source.name}: skipped {skipped} macOS metadata entries (__MACOSX, .DS_Store)")
        _replace_dir(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_zip(path: Path, into: Path, source: Source, label: str) -> int:
    """Extract every member of ``path`` under ``into``; unpack nested zips named in source.

    Returns the number of skipped macOS metadata entries.
    """
    skipped = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                member = _safe_member(info.filename, label)
                if member is None:
                    continue
                if any(p in _SKIPPED_PARTS for p in member.parts) or member.name in _SKIPPED_NAMES:
                    skipped += 1
                    continue
                target = into.joinpath(*member.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                key = member.as_posix()
                if key in source.nested:
                    skipped += _unpack_nested(target, source, key, f"{label}!{key}")
    except zipfile.BadZipFile as exc:
        raise FedharError(
            f"{label}: not a readable zip archive ({exc}); nothing was unpacked. If it was put "
            "there by hand, check that it is the archive itself (not a web page), delete it "
            "and re-run."
        ) from None
    return skipped


def _unpack_nested(path: Path, source: Source, key: str, label: str) -> int:
    """Verify a nested zip where a checksum is pinned, unpack it where it lies, delete it."""
    expected = source.nested[key]
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected:
            raise FedharError(
                f"{source.name}: checksum mismatch for the nested archive {label}: expected "
                f"SHA-256 {expected}, got {actual}. Nothing was unpacked."
            )
    skipped = _extract_zip(path, path.parent, source, label)
    path.unlink()  # its content is unpacked and the outer archive, kept, holds it
    return skipped


def _safe_member(name: str, label: str) -> PurePosixPath | None:
    """The member's relative path; refuse absolute paths and '..' (zip slip)."""
    member = PurePosixPath(name.replace("\\", "/"))
    if member.is_absolute() or ".." in member.parts:
        raise FedharError(f"{label}: unsafe member path {name!r} in the archive; not unpacked")
    parts = [p for p in member.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


def _has_markers(folder: Path, source: Source) -> bool:
    return all((folder / m).exists() for m in source.markers)


def _complete(root: Path, source: Source) -> bool:
    return root.is_dir() and _has_markers(root, source)


def _hoist_if_wrapped(staging: Path, source: Source, archive: Path) -> None:
    """Move the content of a wrapping top-level folder up when the markers are inside it."""
    if _has_markers(staging, source):
        return
    wrappers = [d for d in sorted(staging.iterdir()) if d.is_dir() and _has_markers(d, source)]
    if len(wrappers) != 1:
        top_level = sorted(p.name + ("/" if p.is_dir() else "") for p in staging.iterdir())
        raise FedharError(
            f"{source.name}: {archive} does not have the published layout: expected "
            f"{', '.join(source.markers)} at its top or inside one top-level folder; its top "
            f"level holds {top_level[:12]}. Nothing was unpacked."
        )
    wrapper = wrappers[0]
    for child in sorted(wrapper.iterdir()):
        top = staging / child.name
        if top.exists():
            _resolve_duplicate(top, child, source, wrapper.name)
            continue
        os.replace(child, top)
    wrapper.rmdir()


def _resolve_duplicate(top: Path, inner: Path, source: Source, wrapper: str) -> None:
    """A name both beside the wrapping folder and inside it (PAMAP2's readme.pdf).

    The same bytes: one copy is kept. Different content: the dataset folder's own file keeps
    the name, the outer one is renamed ``<name>.outer``; a clash of folders is an error.
    """
    if top.is_file() and inner.is_file():
        if sha256_file(top) == sha256_file(inner):
            inner.unlink()
            return
        os.replace(top, top.with_name(top.name + ".outer"))
        os.replace(inner, top)
        _say(
            f"{source.name}: note: {top.name} differs beside and inside {wrapper}/; kept the "
            f"one from {wrapper}/, the other as {top.name}.outer"
        )
        return
    raise FedharError(
        f"{source.name}: {top.name!r} exists both beside and inside {wrapper}/ in the archive; "
        "not unpacked"
    )


def _replace_dir(staging: Path, root: Path) -> None:
    """Put ``staging`` at ``root``; an older ``root`` is moved away first, then deleted."""
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(root, old)
    os.replace(staging, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- helpers ------------------------------------------------------------------------------


def _dest(dest_dir: str | Path | None) -> Path:
    return Path(dest_dir) if dest_dir is not None else paths.download_dir()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
