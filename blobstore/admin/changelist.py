"""The blob changelist's totals, paginator, size and folder filters, fit for many rows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.paginator import EmptyPage, Page, PageNotAnInteger, Paginator
from django.db import connections
from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import Substr
from django.http import HttpRequest
from django.utils.formats import number_format
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from blobstore.admin.downloads import blob_storage
from blobstore.admin.forms import human_size
from blobstore.models import Blob
from blobstore.storage.base import prefix_end, validate_listing

ESTIMATE_ABOVE = 10_000
"""On PostgreSQL, an unfiltered list of at least this many blobs gets estimated totals."""

SAMPLE_ROWS = 5_000
"""About how many rows the estimate of the mean size samples."""

KIB, MIB = 1024, 1024 * 1024

MAX_ROWS = 2**63 - 1
"""The largest size, row count or offset a database's 64-bit integers hold."""


@dataclass(frozen=True)
class Totals:
    """How many blobs a list holds and their total size, exactly or estimated."""

    count: int
    size: int
    estimated: bool = False

    def __str__(self) -> str:
        figures = {
            "count": number_format(self.count, force_grouping=True),
            "size": human_size(self.size),
        }
        if self.estimated:
            return (
                ngettext(
                    "About %(count)s blob, about %(size)s in all",
                    "About %(count)s blobs, about %(size)s in all",
                    self.count,
                )
                % figures
            )
        return (
            ngettext(
                "%(count)s blob, %(size)s in all", "%(count)s blobs, %(size)s in all", self.count
            )
            % figures
        )


def blob_totals(blobs: QuerySet[Blob]) -> Totals:
    """Return the totals of blobs: exact, but estimated for a big unfiltered PostgreSQL table."""
    estimate = _estimate(blobs)
    if estimate is not None:
        return estimate
    figures = blobs.aggregate(count=Count("pk"), size=Sum("size"))
    return Totals(figures["count"], figures["size"] or 0)


def _estimate(blobs: QuerySet[Blob]) -> Totals | None:
    connection = connections[blobs.db]
    if connection.vendor != "postgresql" or blobs.query.has_filters():
        return None
    table = connection.ops.quote_name(blobs.model._meta.db_table)
    with connection.cursor() as cursor:
        # The planner's row count, kept by ANALYZE and autovacuum: -1 if never analysed.
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [table])
        (rows,) = cursor.fetchone()
        if rows < ESTIMATE_ABOVE:
            return None
        # Whole pages picked at random: a few hundred reads, whatever the table's size.
        cursor.execute(
            f"SELECT avg(size) FROM {table} TABLESAMPLE SYSTEM (%s) REPEATABLE (0)",
            [min(100.0, 100.0 * SAMPLE_ROWS / rows)],
        )
        (mean,) = cursor.fetchone()
    if mean is None:  # the sample missed every row
        return None
    return Totals(rows, round(rows * mean), estimated=True)


class BlobPaginator(Paginator):  # type: ignore[type-arg]
    """Count the blobs and add up their sizes in one query, estimated on big tables."""

    object_list: QuerySet[Blob]

    @cached_property
    def totals(self) -> Totals:
        """Return the totals of the whole list, which the changelist shows above it."""
        return blob_totals(self.object_list)

    @cached_property
    def count(self) -> int:
        return self.totals.count

    def page(self, number: Any) -> Page[Blob]:
        if not self.totals.estimated:
            return super().page(number)
        # An estimate is off either way: its last page may be short or empty,
        # and pages past it may still hold blobs. Serve what each page holds, up
        # to the last page that any table could have (an OFFSET the database takes).
        try:
            number = int(number)  # which refuses more than 4,300 digits
        except (TypeError, ValueError):
            raise PageNotAnInteger(self.error_messages["invalid_page"]) from None
        if not 1 <= number <= MAX_ROWS // self.per_page:
            raise EmptyPage(self.error_messages["no_results"])
        bottom = (number - 1) * self.per_page
        return Page(self.object_list[bottom : bottom + self.per_page], number, self)


SIZE_RANGES = [
    ("0-1", _("empty")),
    (f"1-{KIB}", _("under 1 KiB")),
    (f"{KIB}-{MIB}", _("1 KiB to 1 MiB")),
    (f"{MIB}-{10 * MIB}", _("1 MiB to 10 MiB")),
    (f"{10 * MIB}-", _("10 MiB or more")),
]
"""The size filter's choices: "LOW-HIGH" in bytes, LOW included, HIGH excluded or absent."""


class SizeListFilter(admin.SimpleListFilter):
    """Filter blobs by a range of sizes; ``?size=LOW-HIGH`` takes any range."""

    title = _("size")
    parameter_name = "size"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return SIZE_RANGES

    def queryset(self, request: HttpRequest, queryset: QuerySet[Blob]) -> QuerySet[Blob] | None:
        value = self.value()
        if value is None:
            return None
        low, high = size_range(value)
        blobs = queryset.filter(size__gte=low)
        return blobs if high is None else blobs.filter(size__lt=high)


def size_range(value: str) -> tuple[int, int | None]:
    """Return the bounds that "LOW-HIGH" or "LOW-" names, or raise IncorrectLookupParameters.

    A bound over the largest size a database holds means no limit there: it is
    taken as that largest size, so that no query gets a number it cannot take.
    """
    # Twenty digits hold every 64-bit number; more are refused before int() reads them.
    bounds = re.fullmatch(r"(\d{1,20})-(\d{0,20})", value, re.ASCII)
    if bounds is None:
        raise IncorrectLookupParameters(f"Not a size range: {value[:50]!r}")
    low, high = bounds.groups()
    return min(int(low), MAX_ROWS), min(int(high), MAX_ROWS) if high else None


FOLDER_DELIMITER = "/"
MAX_FOLDER_CHOICES = 100
"""How many sub-folders the folder filter offers at once."""


class FolderListFilter(admin.SimpleListFilter):
    """Browse keys as folders split by "/": ``?folder=a/b/`` lists the blobs directly in it."""

    title = _("folder")
    parameter_name = "folder"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        """Offer the folders directly in the one shown, or at the top."""
        store = blob_storage(model_admin.get_queryset(request).db)
        folder = self.folder()
        entries = async_to_sync(store.list_folder)(
            folder, delimiter=FOLDER_DELIMITER, limit=MAX_FOLDER_CHOICES
        )
        return [(name, name.removeprefix(folder)) for name in entries if isinstance(name, str)]

    def has_output(self) -> bool:
        # Django applies only the filters it shows: a folder without sub-folders is one.
        return True

    def queryset(self, request: HttpRequest, queryset: QuerySet[Blob]) -> QuerySet[Blob] | None:
        folder = self.folder()
        if not folder:
            return None
        blobs = queryset.filter(key__gte=folder)
        end = prefix_end(folder)
        if end is not None:
            blobs = blobs.filter(key__lt=end)
        # Keys in sub-folders hold the delimiter after the folder's name.
        rest = Substr("key", len(folder) + 1)
        return blobs.alias(rest=rest).exclude(rest__contains=FOLDER_DELIMITER)

    def folder(self) -> str:
        """Return the folder shown, or "" for the top."""
        value = self.value() or ""
        if value and not is_folder(value):
            raise IncorrectLookupParameters(f"Not a folder: {value[:50]!r}")
        return value


def is_folder(text: str) -> bool:
    """Return whether text names a folder: a prefix that ends with the delimiter."""
    try:
        validate_listing(text, "", 1)
    except ValueError:
        return False
    return text.endswith(FOLDER_DELIMITER)


def folder_breadcrumbs(folder: str) -> list[tuple[str, str]]:
    """Return (name, folder) for the top and for each folder down to folder."""
    crumbs = [(str(_("All folders")), "")]
    path = ""
    for name in folder.split(FOLDER_DELIMITER)[:-1]:
        path += name + FOLDER_DELIMITER
        crumbs.append((name or FOLDER_DELIMITER, path))
    return crumbs
