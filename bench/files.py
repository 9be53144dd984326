"""FileField benchmark: BlobFileStorage beside FileSystemStorage and two database peers, one run.

    .venv/bin/python bench/files.py [--large-mib 100] [--small 1000] [--blobs 100000]

Every figure comes from a process of its own (Django configured for that
storage and database, so that peak memory is that storage's): a model with a
``FileField`` saves a file of ``--large-mib`` MiB (read from a file on disk)
and reads it back with ``chunks()``, on SQLite and on PostgreSQL; a model form
saves ``--small`` files of 10 KiB on SQLite; ``listdir`` of a folder of 100
files among ``--blobs`` blobs (median of 20 calls). Storages: Django's
``FileSystemStorage`` (the page cache, no fsync: a ceiling, not a peer),
``blobstore.files.BlobFileStorage`` on ORMStorage, django-db-file-storage
(base64 in a text column) and django-binary-database-files (the whole file in
memory, database only). The peers are installed into this interpreter with
pip when missing; they are no dependency of blobstore. Memory: the growth of
the process's peak resident set during the transfer (the peak is reset first).
PostgreSQL: a database made for the run (BLOBSTORE_BENCH_POSTGRES_URL, default
postgres://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder leads sys.path, where bench/http.py would
# hide the standard library's http package: the repository goes there instead.
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import argparse  # noqa: E402
import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import dj_database_url  # noqa: E402

from bench.storage import ADMIN_URL, postgres_database  # noqa: E402

MIB = 1024 * 1024
SMALL_SIZE = 10 * 1024
FOLDER_SIZE = 100
LISTDIR_CALLS = 20

PEERS = {
    "db_file_storage": "django-db-file-storage",
    "binary_database_files": "django-binary-database-files",
}
"""The peers' modules and the packages that bring them."""

STORAGES: dict[str, dict[str, Any]] = {
    "FileSystemStorage": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "BlobFileStorage": {"BACKEND": "blobstore.files.BlobFileStorage"},
    "BlobFileStorage/SQLiteStorage": {"BACKEND": "blobstore.files.BlobFileStorage"},
    "db-file-storage": {"BACKEND": "db_file_storage.storage.DatabaseFileStorage"},
    "binary-database-files": {"BACKEND": "binary_database_files.storage.DatabaseStorage"},
}
UPLOAD_TO = {"db-file-storage": "filemodels.DBFile/bytes/filename/mimetype"}
"""Where a FileField puts files, for the storages that need a special form of it."""
DATABASE_PEERS = ("db-file-storage", "binary-database-files")
OURS = {
    "sqlite": ("BlobFileStorage", "BlobFileStorage/SQLiteStorage"),
    "postgres": ("BlobFileStorage",),
}
"""Our storages on each database: over ORMStorage, and over a SQLiteStorage file beside SQLite's."""
FILES_OUTSIDE_THE_DATABASE = ("FileSystemStorage", "BlobFileStorage/SQLiteStorage")
"""Storages whose files live on disk, not in the database: measured on SQLite's run only."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large-mib", type=int, default=100)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--blobs", type=int, default=100_000)
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        case, storage, database, directory = options.worker
        print(json.dumps(work(case, storage, database, directory, options)))
        return
    install_peers()
    with tempfile.TemporaryDirectory() as directory, postgres_database("bench_files") as pg_name:
        source = Path(directory) / "large.bin"
        with source.open("wb") as out:
            for _ in range(options.large_mib):
                out.write(os.urandom(MIB))
        report(run_all(options, directory, pg_name), options)


def install_peers() -> None:
    """Install the database peers into this interpreter if they are missing."""
    missing = [package for module, package in PEERS.items() if not importlib.util.find_spec(module)]
    if missing:
        print(f"Installing {', '.join(missing)} with pip ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *missing], check=True)


def run_all(options: argparse.Namespace, directory: str, pg_name: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for database in ("sqlite", "postgres"):
        for storage in STORAGES:
            if database == "postgres" and storage in FILES_OUTSIDE_THE_DATABASE:
                continue  # the database holds only the row
            results[f"large {storage} {database}"] = worker(
                "large", storage, database, directory, pg_name, options
            )
    for storage in STORAGES:
        results[f"small {storage}"] = worker(
            "small", storage, "sqlite", directory, pg_name, options
        )
    for database in ("sqlite", "postgres"):
        results[f"listdir {database}"] = worker(
            "listdir", "BlobFileStorage", database, directory, pg_name, options
        )
    return results


def worker(
    case: str,
    storage: str,
    database: str,
    directory: str,
    pg_name: str,
    options: argparse.Namespace,
) -> dict[str, Any]:
    """Run one measurement in a new process, on a new database; return its figures."""
    print(f"... {case} {storage} on {database}", flush=True)
    run_dir = tempfile.mkdtemp(dir=directory)
    name = f"{run_dir}/db.sqlite3" if database == "sqlite" else pg_name
    arguments = [
        *("--large-mib", str(options.large_mib), "--small", str(options.small)),
        *("--blobs", str(options.blobs), "--worker", case, storage, name, run_dir),
    ]
    done = subprocess.run(
        [sys.executable, __file__, *arguments], capture_output=True, text=True, check=False
    )
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


# In the worker process


def work(
    case: str, storage: str, database: str, directory: str, options: argparse.Namespace
) -> dict[str, Any]:
    configure(storage, database, directory)
    if case == "large":
        return large(Path(directory).parent / "large.bin", options.large_mib)
    if case == "small":
        return small(options.small)
    return listdir(options.blobs)


def configure(storage: str, database: str, directory: str) -> None:
    import django
    from django.conf import settings
    from django.core.management import call_command

    from project.settings import SQLITE_OPTIONS

    db: dict[str, Any]
    if database.endswith(".sqlite3"):
        db = {"ENGINE": "django.db.backends.sqlite3", "NAME": database, "OPTIONS": SQLITE_OPTIONS}
    else:
        db = {**dj_database_url.parse(ADMIN_URL), "NAME": database}
    backend = dict(STORAGES[storage])
    if storage == "FileSystemStorage":
        backend["OPTIONS"] = {"location": f"{directory}/media"}
    apps = ["binary_database_files"] if storage == "binary-database-files" else []
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        USE_TZ=True,
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "blobstore",
            "bench.filemodels",
            *apps,
        ],
        DATABASES={"default": db},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        BLOBSTORE_STORAGES={"default": blob_storage(storage, directory)},
        STORAGES={"default": backend},
        MEDIA_ROOT=f"{directory}/media",
        DB_FILES_AUTO_EXPORT_DB_TO_FS=False,  # django-binary-database-files: database only
    )
    django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)
    from bench.filemodels.models import Upload

    Upload._meta.get_field("file").upload_to = UPLOAD_TO.get(storage, "bench/")


def blob_storage(storage: str, directory: str) -> dict[str, Any]:
    """Return the BLOBSTORE_STORAGES entry that the named storage keeps its files in."""
    if storage == "BlobFileStorage/SQLiteStorage":
        return {
            "BACKEND": "blobstore.storage.SQLiteStorage",
            "OPTIONS": {"database_path": f"{directory}/blobs.sqlite3", "max_object_size": None},
        }
    return {"BACKEND": "blobstore.storage.ORMStorage", "OPTIONS": {"max_object_size": None}}


def large(source: Path, size_mib: int) -> dict[str, Any]:
    """Save the file through a FileField, then read it back in chunks."""
    from django.core.files import File

    from bench.filemodels.models import Upload

    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    with source.open("rb") as handle:
        upload = Upload()
        base = start_peak()
        started = time.perf_counter()
        upload.file.save("large.bin", File(handle), save=True)
        saved = time.perf_counter() - started
        save_growth = peak_growth(base)
    upload = Upload._default_manager.get(pk=upload.pk)
    base = start_peak()
    started = time.perf_counter()
    digest = hashlib.sha256()
    upload.file.open("rb")
    for chunk in upload.file.chunks():
        digest.update(chunk)
    upload.file.close()
    read = time.perf_counter() - started
    read_growth = peak_growth(base)
    if digest.hexdigest() != expected:
        raise SystemExit("The file read back is not the file saved.")
    return {
        "save MiB/s": size_mib / saved,
        "read MiB/s": size_mib / read,
        "save RSS MiB": save_growth,
        "read RSS MiB": read_growth,
    }


def small(count: int) -> dict[str, Any]:
    """Save count files of 10 KiB, each through a model form, as an upload view would."""
    from django import forms
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.utils.datastructures import MultiValueDict

    from bench.filemodels.models import Upload

    class UploadForm(forms.ModelForm):  # type: ignore[type-arg]
        class Meta:
            model = Upload
            fields = ["file"]

    data = os.urandom(SMALL_SIZE)
    started = time.perf_counter()
    for number in range(count):
        upload = SimpleUploadedFile(f"f{number}.bin", data)
        files = MultiValueDict[str, Any]({"file": [upload]})
        form = UploadForm(data={}, files=files)
        if not form.is_valid():
            raise SystemExit(f"The form refused the upload: {form.errors}")
        form.save()
    elapsed = time.perf_counter() - started
    return {"saves/s": count / elapsed}


def listdir(blobs: int) -> dict[str, Any]:
    """Time listdir of a folder of 100 files among `blobs` blobs."""
    import hashlib as hashing
    import uuid

    from django.core.files.storage import default_storage
    from django.utils import timezone

    from blobstore.models import Blob

    now = timezone.now()
    empty = hashing.sha256(b"").hexdigest()
    keys = [f"bulk/{number // 1000:04}/{number:07}.bin" for number in range(blobs - FOLDER_SIZE)]
    keys += [f"folder/{number:03}.txt" for number in range(FOLDER_SIZE)]
    rows = (
        Blob(
            key=key,
            data=b"",
            size=0,
            sha256=empty,
            created=now,
            updated=now,
            version=uuid.uuid4(),
        )
        for key in keys
    )
    batch: list[Blob] = []
    for row in rows:
        batch.append(row)
        if len(batch) == 5000:
            Blob.objects.bulk_create(batch)
            batch = []
    Blob.objects.bulk_create(batch)
    timings = []
    for _ in range(LISTDIR_CALLS):
        started = time.perf_counter()
        directories, files = default_storage.listdir("folder")
        timings.append(time.perf_counter() - started)
    if len(files) != FOLDER_SIZE or directories:
        raise SystemExit(f"listdir found {len(directories)} folders and {len(files)} files.")
    top = default_storage.listdir("")
    return {"listdir ms": statistics.median(timings) * 1000, "top folders": len(top[0])}


def start_peak() -> int:
    """Reset the process's peak resident set; return the resident set now, in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak_growth(base: int) -> float:
    """Return how far the peak resident set rose over base, in MiB."""
    return (_status("VmHWM") - base) / 1024


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}.")


# The report


def report_large(
    storage: str, database: str, ours: dict[str, Any], peers: list[dict[str, Any]]
) -> None:
    for way in ("save", "read"):
        key = f"{way} MiB/s"
        line = f"  {storage} on {database}, {way}: / faster peer = "
        if "error" in ours or not peers:
            print(line + "n/a")
            continue
        ratio = ours[key] / max(figures[key] for figures in peers)
        verdict = "meets" if ratio >= 3 else "misses"
        print(line + f"{ratio:,.1f}x ({verdict} the target of 3x)")
    if "error" not in ours:
        worst = max(ours["save RSS MiB"], ours["read RSS MiB"])
        verdict = "meets" if worst < 32 else "misses"
        print(f"  {storage} on {database}: peak RSS growth {worst:,.1f} MiB "
              f"({verdict} the target of < 32 MiB)")  # fmt: skip


def report(results: dict[str, Any], options: argparse.Namespace) -> None:
    print()
    print(f"FileField, one file of {options.large_mib} MiB (save, then read with chunks()):")
    print(f"  {'storage':<32}{'database':<10}{'save MiB/s':>11}{'read MiB/s':>11}"
          f"{'save RSS':>10}{'read RSS':>10}")  # fmt: skip
    for name, figures in results.items():
        if name.startswith("large "):
            _, storage, database = name.split()
            if "error" in figures:
                print(f"  {storage:<32}{database:<10}  failed: {figures['error']}")
                continue
            print(
                f"  {storage:<32}{database:<10}{figures['save MiB/s']:>11,.0f}"
                f"{figures['read MiB/s']:>11,.0f}{figures['save RSS MiB']:>8,.1f}MB"
                f"{figures['read RSS MiB']:>8,.1f}MB"
            )
    for database, storages in OURS.items():
        peers = [results[f"large {peer} {database}"] for peer in DATABASE_PEERS]
        peers = [figures for figures in peers if "error" not in figures]
        for storage in storages:
            report_large(storage, database, results[f"large {storage} {database}"], peers)
    fs = results["large FileSystemStorage sqlite"]
    for storage in OURS["sqlite"]:
        ours = results[f"large {storage} sqlite"]
        if "error" not in fs and "error" not in ours:
            print(
                f"  {storage} on sqlite / FileSystemStorage: save "
                f"{ours['save MiB/s'] / fs['save MiB/s']:.2f}x, read "
                f"{ours['read MiB/s'] / fs['read MiB/s']:.2f}x"
            )
    print()
    print(f"{options.small} saves of 10 KiB through a model form, SQLite:")
    for storage in STORAGES:
        figures = results[f"small {storage}"]
        text = figures.get("error") or f"{figures['saves/s']:,.0f} saves/s"
        print(f"  {storage:<32}{text}")
    for storage in OURS["sqlite"]:
        ours = results[f"small {storage}"]
        others = [other for other in STORAGES if other not in OURS["sqlite"]]
        for other in others if "error" not in ours else []:
            theirs = results[f"small {other}"]
            if "error" in theirs:
                continue
            target = 0.3 if other == "FileSystemStorage" else 2.0
            ratio = ours["saves/s"] / theirs["saves/s"]
            verdict = "meets" if ratio >= target else "misses"
            print(f"  {storage} / {other}: {ratio:,.2f}x "
                  f"({verdict} the target of {target}x)")  # fmt: skip
    print()
    print(f"listdir of a folder of {FOLDER_SIZE} files among {options.blobs:,} blobs "
          f"(median of {LISTDIR_CALLS}):")  # fmt: skip
    for database in ("sqlite", "postgres"):
        figures = results[f"listdir {database}"]
        if "error" in figures:
            print(f"  {database}: failed: {figures['error']}")
            continue
        verdict = "meets" if figures["listdir ms"] < 50 else "misses"
        print(f"  {database}: {figures['listdir ms']:.1f} ms ({verdict} the target of < 50 ms)")


if __name__ == "__main__":
    main()
