"""Django settings, configured by environment only (DESIGN.md §2)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
import django_stubs_ext
from kombu.entity import Queue  # kombu's package root re-exports lazily, hidden from mypy

from recotem import config
from recotem.lib.clientaddr import parse_trusted_proxies
from recotem.lib.moduledump import install_from_env as _install_module_dump

_install_module_dump()  # RECOTEM_DEBUG_MODULES_DIR: which modules this process imported

# Lets the classes django-stubs declares generic (ModelForm[Project], ModelAdmin[ApiKey]) be
# subscripted at runtime too, as they are for the type checker; it must run before any is used.
django_stubs_ext.monkeypatch()

config.private_files()
DATA_DIR = config.data_dir()
BASE_DIR = os.path.dirname(os.path.abspath(__file__))

SECRET_KEY = config.secret_key()
# Old keys keep sessions, API keys and model signatures valid after SECRET_KEY changes
# (docs/security.md, "Rotating SECRET_KEY"); `recotem manage resign_models` re-signs artifacts.
SECRET_KEY_FALLBACKS = config.env_list("RECOTEM_SECRET_KEY_FALLBACKS")
DEBUG = config.env_bool("RECOTEM_DEBUG", False)
# Only names this server answers to: a wildcard lets anyone's Host header into absolute URLs.
ALLOWED_HOSTS = config.env_list("RECOTEM_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = config.env_list("RECOTEM_CSRF_TRUSTED_ORIGINS")

# --- HTTPS deployments (RECOTEM_HTTPS=1 behind a TLS-terminating proxy) ------------------------
RECOTEM_HTTPS = config.env_bool("RECOTEM_HTTPS", False)
SESSION_COOKIE_SECURE = RECOTEM_HTTPS
CSRF_COOKIE_SECURE = RECOTEM_HTTPS
SECURE_HSTS_SECONDS = 365 * 24 * 3600 if RECOTEM_HTTPS else 0
# The proxy in front sets X-Forwarded-Proto; without it Django would think every request is http.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if RECOTEM_HTTPS else None
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Client addresses (login lockout) come from the socket unless this names the proxies in front:
# a count ("1": one proxy appends to X-Forwarded-For) or CIDRs ("10.0.0.0/8,192.168.1.5").
RECOTEM_TRUSTED_PROXIES = os.environ.get("RECOTEM_TRUSTED_PROXIES", "")
parse_trusted_proxies(RECOTEM_TRUSTED_PROXIES)  # a typo fails at start-up, not per request

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt",
    "rest_framework_simplejwt.token_blacklist",
    "axes",
    "drf_spectacular",
    "django_filters",
    "django_celery_beat",
    "django_celery_results",
    "django_htmx",
    "recotem.core",
    "recotem.accounts",
    "recotem.projects",
    "recotem.tuning",
    "recotem.training",
    "recotem.deployment",
    "recotem.experiments",
    "recotem.retraining",
    "recotem.front",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a lockout flagged during authentication into a 429.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "recotem.urls"
ASGI_APPLICATION = "recotem.asgi.application"

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

# --- database -------------------------------------------------------------------------------
# SQLite by default. WAL + IMMEDIATE transactions + a generous timeout is what survived
# web, worker and beat writing at once on this machine (STACK-FACTS.md).
SQLITE_PATH = DATA_DIR / "db.sqlite3"
if os.environ.get("DATABASE_URL"):
    # conn_max_age=0: under ASGI every request may run on a different thread, and persistent
    # connections then pile up (one per thread) until PostgreSQL refuses clients.
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=0)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(SQLITE_PATH),
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
if os.environ.get("RECOTEM_TEST_DATABASE_NAME"):
    DATABASES["default"].setdefault("TEST", {})["NAME"] = os.environ["RECOTEM_TEST_DATABASE_NAME"]
IS_SQLITE = DATABASES["default"]["ENGINE"].endswith("sqlite3")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
# --- login lockout (django-axes): one policy for /login/, /admin/login/ and the API login -------
AUTHENTICATION_BACKENDS = [
    "recotem.accounts.lockout.LockoutBackend",  # django-axes: refuses a locked name or address
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = config.env_int("RECOTEM_LOGIN_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = timedelta(minutes=config.env_int("RECOTEM_LOGIN_COOLOFF_MINUTES", 15))
# Locked per username and, separately, per client address: rotating either alone gains nothing.
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# A lock ends one cool-off after it began, however often the locked user keeps trying.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_CLIENT_IP_CALLABLE = "recotem.accounts.lockout.client_ip"
AXES_LOCKOUT_CALLABLE = "recotem.accounts.lockout.lockout_response"
AXES_DISABLE_ACCESS_LOG = True  # failures are kept (the lock); successful logins are not logged
AXES_VERBOSE = False

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- files ----------------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
MEDIA_ROOT = DATA_DIR / "media"
MEDIA_URL = "/media/"
STORAGES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
RECOTEM_STORAGE = os.environ.get("RECOTEM_STORAGE", "local")
if RECOTEM_STORAGE not in ("local", "s3"):
    raise ValueError(f"RECOTEM_STORAGE must be local or s3, got {RECOTEM_STORAGE!r}")
if RECOTEM_STORAGE == "s3":
    # Uploads, source snapshots and artifacts in one bucket (AWS, MinIO, Ceph, R2...): the only
    # shared disk of a multi-machine install. Credentials come from the standard AWS variables
    # (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, or an instance role);
    # docs/scale-out.md.
    STORAGES["default"] = {
        "BACKEND": "recotem.core.s3storage.ImmutableNameS3Storage",
        "OPTIONS": config.s3_options(),
    }
# Every machine's cache of stored files read from object storage (recotem.core.files).
RECOTEM_CACHE_DIR = Path(os.environ.get("RECOTEM_CACHE_DIR") or DATA_DIR / "cache")
RECOTEM_CACHE_MB = config.env_int("RECOTEM_CACHE_MB", 2048)
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

RECOTEM_MAX_UPLOAD_MB = config.env_int("RECOTEM_MAX_UPLOAD_MB", 500)
# What a file may become once read: bytes after gzip, and rows. Checked while reading every
# upload, source snapshot, preview and item metadata file (recotem.projects.limits).
RECOTEM_MAX_UNCOMPRESSED_MB = config.env_int(
    "RECOTEM_MAX_UNCOMPRESSED_MB", 4 * RECOTEM_MAX_UPLOAD_MB
)
RECOTEM_MAX_ROWS = config.env_int("RECOTEM_MAX_ROWS", 200_000_000)
# ... and how many times its stored size a compressed file may expand (gzip bombs).
RECOTEM_MAX_INFLATE_RATIO = config.env_int("RECOTEM_MAX_INFLATE_RATIO", 50)
# Django's default (2.5 MB) for everything that is not a file: form fields, JSON bodies.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024  # larger uploads stream to a temp file
FILE_UPLOAD_TEMP_DIR = None
# Stored files and their folders are the owner's only (they hold other people's data).
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700
RECOTEM_KEEP_MODELS = config.env_int("RECOTEM_KEEP_MODELS", 10)
# Retraining safety: a RUNNING run whose heartbeat is older than RECOTEM_RUN_STALE_SECONDS is
# declared "worker lost" by the reaper, which runs every RECOTEM_REAPER_SECONDS.
RECOTEM_RUN_HEARTBEAT_SECONDS = config.env_int("RECOTEM_RUN_HEARTBEAT_SECONDS", 10)
RECOTEM_RUN_STALE_SECONDS = config.env_int("RECOTEM_RUN_STALE_SECONDS", 60)
RECOTEM_REAPER_SECONDS = config.env_int("RECOTEM_REAPER_SECONDS", 30)
# A PENDING job whose message was handed to the broker this long ago and has not started is sent
# again (a broker restarted without persistence forgets its queue; duplicates are harmless).
RECOTEM_PENDING_RESEND_SECONDS = config.env_int("RECOTEM_PENDING_RESEND_SECONDS", 120)
RECOTEM_ROLLBACK_DEPTH = config.env_int("RECOTEM_ROLLBACK_DEPTH", 3)
RECOTEM_KEEP_SNAPSHOTS = config.env_int("RECOTEM_KEEP_SNAPSHOTS", 10)
RECOTEM_ALLOWED_SOURCE_HOSTS = config.env_list("RECOTEM_ALLOWED_SOURCE_HOSTS")
# Feedback events older than this many days are deleted by the reaper (0 keeps them for ever).
RECOTEM_EVENTS_KEEP_DAYS = config.env_int("RECOTEM_EVENTS_KEEP_DAYS", 180)
# The inference app's memo of serialized answers, shared by every model of a process.
RECOTEM_INFERENCE_CACHE_MB = config.env_int("RECOTEM_INFERENCE_CACHE_MB", 256)
# Bearer token for /inference/metrics (and full /inference/health); unset = metrics are open.
RECOTEM_METRICS_TOKEN = os.environ.get("RECOTEM_METRICS_TOKEN", "")

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

# --- API ------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # No SessionAuthentication: the UI never calls the API, so a browser's session cookie is
    # not an API credential (docs/security.md, "Sessions and the API").
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
        "recotem.accounts.authentication.ApiKeyAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["recotem.accounts.permissions.IsOwnerOrScopedKey"],
    "DEFAULT_PAGINATION_CLASS": "recotem.core.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
    "DEFAULT_FILTER_BACKENDS": ["recotem.core.filters.OwnedFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "recotem.core.exceptions.exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=config.env_int("RECOTEM_ACCESS_TOKEN_MINUTES", 15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=config.env_int("RECOTEM_REFRESH_TOKEN_DAYS", 7)),
    "AUTH_HEADER_TYPES": ("Bearer",),
    # Each refresh returns a new refresh token and blacklists the old one (a stolen one works
    # once at most); logout and password changes blacklist the rest (recotem.accounts.tokens).
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    # Tokens carry a digest of the password hash: after any password change they stop working.
    "CHECK_REVOKE_TOKEN": True,
    "UPDATE_LAST_LOGIN": False,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Recotem API",
    "DESCRIPTION": "Management API of Recotem: data, tuning, training, deployment, retraining.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "recotem_cache",
    }
}

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = config.broker_url()
CELERY_BROKER_IS_EMBEDDED = config.broker_is_embedded(CELERY_BROKER_URL)
if CELERY_BROKER_IS_EMBEDDED:
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {"connect_args": {"timeout": 30}}
    # The SQLAlchemy transport has no broadcast channel; remote control would hang.
    CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # Redis re-delivers an unacknowledged (or delayed) message after this long; it must exceed
    # the longest task plus the longest retry countdown, or work would be started twice.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 12 * 3600}
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "celery"
# Retraining and tuning have their own queues so a burst of schedules at 02:00 waits its turn
# without starving other work; a worker started without -Q consumes all of them.
CELERY_TASK_QUEUES = [  # kombu's Queue.__init__ is unannotated
    Queue("celery"),  # type: ignore[no-untyped-call]
    Queue("tuning"),  # type: ignore[no-untyped-call]
    Queue("retraining"),  # type: ignore[no-untyped-call]
]
CELERY_TASK_ROUTES = {
    "recotem.tuning.tasks.*": {"queue": "tuning"},
    "recotem.retraining.tasks.run_retraining": {"queue": "retraining"},
}
CELERY_BEAT_SCHEDULER = "recotem.retraining.scheduler:RetrainingScheduler"  # a DatabaseScheduler
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = config.env_bool("RECOTEM_TASKS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
DJANGO_CELERY_BEAT_TZ_AWARE = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("RECOTEM_LOG_LEVEL", "INFO")},
    # axes logs every attempt at INFO; its lockouts are WARNING and stay visible.
    "loggers": {"django.db.backends": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}
