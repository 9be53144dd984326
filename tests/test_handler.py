"""The BLOBSTORE_STORAGES handler and its system checks."""

from __future__ import annotations

import asyncio
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.checks import Error
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import SimpleTestCase, override_settings

from blobstore.checks import (
    SQLITE_OPTIONS,
    check_access,
    check_sqlite_journal,
    check_storages,
)
from blobstore.contrib.proxystore.checks import check_proxystore
from blobstore.exceptions import InvalidStorageError
from blobstore.storage import DictStorage, ORMStorage, SQLiteStorage, StorageHandler, storages

DICT = "blobstore.storage.DictStorage"

# (setting, check id, text the message must hold: the alias and the bad value)
MALFORMED: list[tuple[Any, str, list[str]]] = [
    (["default"], "blobstore.E001", ["['default']"]),
    (None, "blobstore.E001", ["None"]),
    ({"other": {"BACKEND": DICT}}, "blobstore.E002", ["'default'", "['other']"]),
    ({"default": DICT}, "blobstore.E003", ["'default'", repr(DICT)]),
    ({"default": {"OPTIONS": {}}}, "blobstore.E003", ["'default'", "{'OPTIONS': {}}"]),
    (
        {"default": {"BACKEND": "no.such.Storage"}},
        "blobstore.E004",
        ["'default'", "'no.such.Storage'"],
    ),
    (
        {"default": {"BACKEND": "blobstore.storage.Nope"}},
        "blobstore.E004",
        ["'blobstore.storage.Nope'"],
    ),
    ({"default": {"BACKEND": 42}}, "blobstore.E004", ["'default'", "42"]),
    ({"default": {"BACKEND": DICT, "OPTIONS": []}}, "blobstore.E005", ["'default'", "[]"]),
    (
        {"default": {"BACKEND": DICT, "OPTIONS": {"colour": "red"}}},
        "blobstore.E005",
        ["'default'", "{'colour': 'red'}", "colour"],
    ),
    (
        {"default": {"BACKEND": DICT, "OPTIONS": {"max_object_size": -5}}},
        "blobstore.E005",
        ["'default'", "-5"],
    ),
    (
        {"default": {"BACKEND": DICT}, "cache": {"BACKEND": "collections.OrderedDict"}},
        "blobstore.E006",
        ["'cache'", "'collections.OrderedDict'"],
    ),
]


class StorageHandlerTests(SimpleTestCase):
    def test_default_without_the_setting_is_orm_on_default_database(self) -> None:
        with override_settings():
            del settings.BLOBSTORE_STORAGES
            storage = storages["default"]
        self.assertIsInstance(storage, ORMStorage)
        assert isinstance(storage, ORMStorage)
        self.assertEqual(storage.using, "default")

    @override_settings(
        BLOBSTORE_STORAGES={
            "default": {"BACKEND": DICT},
            "files": {
                "BACKEND": "blobstore.storage.SQLiteStorage",
                "OPTIONS": {"database_path": "/tmp/x.sqlite3", "max_object_size": 10},
            },
        }
    )
    def test_one_instance_per_alias_built_with_options(self) -> None:
        self.assertIsInstance(storages["default"], DictStorage)
        self.assertIs(storages["default"], storages["default"])
        files = storages["files"]
        assert isinstance(files, SQLiteStorage)
        self.assertEqual((files.database_path, files.max_object_size), ("/tmp/x.sqlite3", 10))

    def test_instances_are_reset_when_the_setting_changes(self) -> None:
        first = storages["default"]
        with override_settings(BLOBSTORE_STORAGES={"default": {"BACKEND": DICT}}):
            inside = storages["default"]
            self.assertIsInstance(inside, DictStorage)
        after = storages["default"]
        self.assertIsNot(after, inside)
        self.assertIsNot(after, first)
        self.assertIsInstance(after, ORMStorage)

    def test_a_change_of_the_setting_closes_the_instances_it_forgets(self) -> None:
        sqlite = {"default": {"BACKEND": "blobstore.storage.SQLiteStorage"}}
        with override_settings(BLOBSTORE_STORAGES=sqlite):
            opened = storages["default"]
            assert isinstance(opened, SQLiteStorage)
            async_to_sync(opened.set)("k", b"v")
            connection = opened._db
            self.assertIsNotNone(connection)
        self.assertIsNone(opened._db)
        assert connection is not None
        with self.assertRaisesMessage(ValueError, "no active connection"):
            connection._conn  # noqa: B018  # aiosqlite's own word for a closed connection

    def test_a_change_on_a_running_event_loop_closes_them_on_it(self) -> None:
        async def change_settings_on_a_loop() -> tuple[SQLiteStorage, bool]:
            with override_settings(BLOBSTORE_STORAGES=sqlite):
                opened = storages["default"]
                assert isinstance(opened, SQLiteStorage)
                await opened.set("k", b"v")
            open_at_once = opened._db is not None
            await asyncio.sleep(0.05)  # the closing runs on this loop, as soon as it may
            return opened, open_at_once

        sqlite = {"default": {"BACKEND": "blobstore.storage.SQLiteStorage"}}
        opened, open_at_once = async_to_sync(change_settings_on_a_loop)()
        self.assertTrue(open_at_once)
        self.assertIsNone(opened._db)

    def test_unknown_alias_names_the_alias(self) -> None:
        with self.assertRaisesMessage(InvalidStorageError, "'nope'"):
            storages["nope"]

    def test_explicit_backends_ignore_the_setting(self) -> None:
        handler = StorageHandler({"default": {"BACKEND": DICT}})
        self.assertIsInstance(handler["default"], DictStorage)

    def test_malformed_settings_raise_improperly_configured_naming_the_value(self) -> None:
        for setting, check_id, fragments in MALFORMED:
            with self.subTest(setting=setting), override_settings(BLOBSTORE_STORAGES=setting):
                alias = "cache" if "cache" in (setting or {}) else "default"
                with self.assertRaises(ImproperlyConfigured) as raised:
                    storages[alias]
                self.assertEqual(raised.exception.check_id, check_id)  # type: ignore[attr-defined]
                for fragment in fragments:
                    self.assertIn(fragment, str(raised.exception))


def orm_on(using: str) -> dict[str, Any]:
    return {"BACKEND": "blobstore.storage.ORMStorage", "OPTIONS": {"using": using}}


class SQLiteJournalCheckTests(SimpleTestCase):
    """tests/settings.py has the databases: plain_sqlite as a new project's, wal_sqlite."""

    def test_a_new_projects_sqlite_is_warned_about_with_the_fix(self) -> None:
        with override_settings(BLOBSTORE_STORAGES={"default": orm_on("plain_sqlite")}):
            warnings = check_sqlite_journal()
        self.assertEqual([warning.id for warning in warnings], ["blobstore.W001"])
        self.assertIn("DATABASES['plain_sqlite'] is SQLite without WAL", warnings[0].msg)
        self.assertIn(repr(SQLITE_OPTIONS), str(warnings[0].hint))

    def test_wal_postgresql_and_other_backends_pass(self) -> None:
        for storages_setting in [
            {"default": orm_on("wal_sqlite")},
            {"default": orm_on("postgres")},
            {"default": {"BACKEND": DICT}},
        ]:
            with (
                self.subTest(storages=storages_setting),
                override_settings(BLOBSTORE_STORAGES=storages_setting),
            ):
                self.assertEqual(check_sqlite_journal(), [])

    def test_each_database_an_alias_names_is_checked_once(self) -> None:
        setting = {
            "default": {"BACKEND": DICT},
            "files": orm_on("plain_sqlite"),
            "more": orm_on("plain_sqlite"),
            "fine": orm_on("wal_sqlite"),
        }
        with override_settings(BLOBSTORE_STORAGES=setting):
            warnings = check_sqlite_journal()
        self.assertEqual([warning.msg[:25] for warning in warnings], ["DATABASES['plain_sqlite']"])


class SystemCheckTests(SimpleTestCase):
    databases = "__all__"  # the check command asks every database what it supports

    def test_valid_setting_passes(self) -> None:
        self.assertEqual(check_storages(), [])

    def test_each_malformed_setting_has_its_error(self) -> None:
        for setting, check_id, fragments in MALFORMED:
            with self.subTest(setting=setting), override_settings(BLOBSTORE_STORAGES=setting):
                errors = check_storages()
                self.assertEqual([error.id for error in errors], [check_id])
                self.assertIsInstance(errors[0], Error)
                for fragment in fragments:
                    self.assertIn(fragment, errors[0].msg)

    def test_every_bad_alias_is_reported(self) -> None:
        setting = {
            "default": {"BACKEND": "no.such.Storage"},
            "other": {"BACKEND": DICT, "OPTIONS": {"bad": 1}},
        }
        with override_settings(BLOBSTORE_STORAGES=setting):
            ids = [error.id for error in check_storages()]
        self.assertEqual(ids, ["blobstore.E004", "blobstore.E005"])

    def test_check_command_fails_on_a_malformed_setting(self) -> None:
        setting = {"default": {"BACKEND": "no.such.Storage"}}
        with (
            override_settings(BLOBSTORE_STORAGES=setting),
            self.assertRaisesMessage(SystemCheckError, "blobstore.E004"),
        ):
            call_command("check", verbosity=0)


class SettingsCheckTests(SimpleTestCase):
    def test_anonymous_access_choices(self) -> None:
        for value in (None, "read", "write"):
            with self.subTest(value=value), override_settings(BLOBSTORE_ANONYMOUS_ACCESS=value):
                self.assertEqual(check_access(), [])
        for wrong in ("READ", True, "all"):
            with self.subTest(wrong=wrong), override_settings(BLOBSTORE_ANONYMOUS_ACCESS=wrong):
                (error,) = check_access()
                self.assertEqual(error.id, "blobstore.E007")
                self.assertIn(repr(wrong), error.msg)

    def test_proxystore_setting(self) -> None:
        good = {"UUID": "5a0a4b5e-8d6a-4b8e-9d3c-2f1e0c9b8a70", "ALLOWED_CLIENTS": ["10.0.0.0/8"]}
        with override_settings(BLOBSTORE_PROXYSTORE=good):
            self.assertEqual(check_proxystore(), [])
        cases = [
            (["UUID"], "['UUID']"),
            ({"UUID": "not-a-uuid"}, "'not-a-uuid'"),
            ({"UUID": "886313e1-3b8a-5372-9b90-0c9aee199e5d"}, "version 4"),
            ({"ALLOWED_CLIENTS": "127.0.0.1"}, "'127.0.0.1'"),
            ({"ALLOWED_CLIENTS": ["localhost"]}, "['localhost']"),
        ]
        for setting, fragment in cases:
            with self.subTest(setting=setting), override_settings(BLOBSTORE_PROXYSTORE=setting):
                (error,) = check_proxystore()
                self.assertEqual(error.id, "blobstore.E008")
                self.assertIn(fragment, error.msg)
