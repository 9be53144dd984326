"""Settings of the blobstore demo and development site.

SQLite in ``var/`` by default; ``DATABASE_URL`` (for example
``postgres://postgres@127.0.0.1:5432/blobstore``) switches to PostgreSQL.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("BLOBSTORE_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)

# A development key: set DJANGO_SECRET_KEY anywhere that is not your laptop.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-blobstore-demo-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "blobstore",
    "project",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "project.asgi.application"

# SQLite tuned for a web server: WAL so readers never wait for the writer,
# synchronous=NORMAL so a commit needs no fsync (safe from crashes, see the
# README), a busy timeout and IMMEDIATE transactions so that several processes
# writing one file wait their turn instead of failing with "database is locked".
SQLITE_OPTIONS = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 30,
}

# Persistent connections, checked before reuse: the API's ORM work shares one
# thread, and opening a connection per request would cost more than the query.
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{VAR_DIR / 'blobstore.sqlite3'}",
        conn_max_age=600,
        conn_health_checks=True,
    ),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = SQLITE_OPTIONS
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A statement run five times on a connection is prepared there (the API's
    # reads on the event loop, at once). Django prepares none by default, as a
    # pooler in transaction mode (PgBouncer) needs: leave this out behind one.
    DATABASES["default"]["OPTIONS"] = {"prepare_threshold": 5}

BLOBSTORE_STORAGES = {
    "default": {"BACKEND": "blobstore.storage.ORMStorage", "OPTIONS": {}},
}

# Uploads (FileField, ImageField, default_storage) are blobs under "media/" of
# the default blobstore storage; their URLs are signed URLs of the API.
STORAGES = {
    "default": {
        "BACKEND": "blobstore.files.BlobFileStorage",
        "OPTIONS": {"alias": "default", "location": "media/"},
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

LOGIN_URL = "admin:login"

# Server errors (500s, with their tracebacks) and what blobstore reports go to
# standard error, where the ASGI server's own log goes, also with DEBUG off,
# when Django's defaults log nothing without ADMINS to mail. With DEBUG on,
# Django's console handler shows requests' errors and warnings already: the
# filter keeps them from being written twice. A 4xx is the client's matter.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"require_debug_false": {"()": "django.utils.log.RequireDebugFalse"}},
    "formatters": {
        "server": {"format": "{asctime} {levelname} {name}: {message}", "style": "{"},
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "server",
        },
        "server_errors": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "server",
            "level": "ERROR",
            "filters": ["require_debug_false"],
        },
    },
    "loggers": {
        # Propagates to "django" too: its console (DEBUG on) and mail_admins (ADMINS set).
        "django.request": {"handlers": ["server_errors"]},
        "blobstore": {"handlers": ["stderr"], "level": "INFO"},
    },
}
