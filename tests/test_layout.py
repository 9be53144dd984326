"""The public import paths of the SPEC and docs/ lead to the modules that hold the code."""

from __future__ import annotations

import contextlib
import importlib
import io

from django.conf import settings
from django.contrib import admin
from django.core import checks
from django.core.management import call_command
from django.test import SimpleTestCase

import blobstore.admin
import blobstore.api.asgi
import blobstore.api.urls
import blobstore.asgi
import blobstore.urls
from blobstore.contrib.proxystore import checks as proxystore_checks
from blobstore.contrib.proxystore import commands as proxystore_commands
from blobstore.models import APIToken, Blob


class PublicPathTests(SimpleTestCase):
    def test_blobstore_urls_is_the_api_routes(self) -> None:
        self.assertIs(blobstore.urls.urlpatterns, blobstore.api.urls.urlpatterns)
        self.assertEqual(blobstore.urls.app_name, "blobstore")

    def test_blobstore_asgi_is_the_api_handler(self) -> None:
        self.assertIs(blobstore.asgi.get_asgi_application, blobstore.api.asgi.get_asgi_application)
        self.assertIs(blobstore.asgi.ASGIHandler, blobstore.api.asgi.ASGIHandler)

    def test_every_public_name_resolves(self) -> None:
        public = {
            "blobstore.storage": [
                *("Storage", "DictStorage", "SQLiteStorage", "ORMStorage"),
                *("StorageHandler", "storages"),
            ],
            "blobstore.models": ["Blob", "APIToken"],
            "blobstore.exceptions": ["ObjectSizeExceededError"],
            "blobstore.files": ["BlobFileStorage"],
            "blobstore.signing": ["signed_url"],
            "blobstore.urls": ["app_name", "urlpatterns"],
            "blobstore.asgi": ["ASGIHandler", "get_asgi_application"],
            "blobstore.contrib.proxystore.urls": ["app_name", "urlpatterns"],
        }
        for module_name, names in public.items():
            module = importlib.import_module(module_name)
            for name in names:
                with self.subTest(f"{module_name}.{name}"):
                    self.assertTrue(hasattr(module, name))

    def test_the_admin_package_registers_the_model_admins(self) -> None:
        self.assertIsInstance(admin.site.get_model_admin(Blob), blobstore.admin.BlobAdmin)
        self.assertIsInstance(admin.site.get_model_admin(APIToken), blobstore.admin.APITokenAdmin)


class ProxyStoreSubPackageTests(SimpleTestCase):
    """blobstore.contrib.proxystore works with "blobstore" alone in INSTALLED_APPS."""

    def test_it_is_no_app_of_its_own(self) -> None:
        self.assertNotIn("blobstore.contrib.proxystore", settings.INSTALLED_APPS)

    def test_its_checks_run_with_blobstore(self) -> None:
        self.assertIn(proxystore_checks.check_proxystore, checks.registry.registry.get_checks())

    def test_the_blobstore_command_runs_its_subcommand(self) -> None:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit):
            call_command("blobstore", proxystore_commands.NAME, "--help")
        self.assertIn("usage: blobstore proxystore-config", out.getvalue())
