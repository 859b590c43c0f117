"""Django settings, configured by environment only (DESIGN.md §2)."""

from __future__ import annotations

import os
from datetime import timedelta

import dj_database_url
from kombu import Queue

from recotem import config

DATA_DIR = config.data_dir()
BASE_DIR = os.path.dirname(os.path.abspath(__file__))

SECRET_KEY = config.secret_key()
DEBUG = config.env_bool("RECOTEM_DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("RECOTEM_ALLOWED_HOSTS", "*").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.environ.get("RECOTEM_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

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
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
if os.environ.get("RECOTEM_STORAGE", "local") == "s3":
    # django-storages is optional: install it alongside boto3 to use S3-compatible storage.
    STORAGES["default"] = {"BACKEND": "storages.backends.s3.S3Storage"}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

RECOTEM_MAX_UPLOAD_MB = config.env_int("RECOTEM_MAX_UPLOAD_MB", 500)
DATA_UPLOAD_MAX_MEMORY_SIZE = None  # upload size is checked per file against the limit above
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024  # larger uploads stream to a temp file
FILE_UPLOAD_TEMP_DIR = None
RECOTEM_KEEP_MODELS = config.env_int("RECOTEM_KEEP_MODELS", 10)
# Retraining safety: a RUNNING run whose heartbeat is older than RECOTEM_RUN_STALE_SECONDS is
# declared "worker lost" by the reaper, which runs every RECOTEM_REAPER_SECONDS.
RECOTEM_RUN_HEARTBEAT_SECONDS = config.env_int("RECOTEM_RUN_HEARTBEAT_SECONDS", 10)
RECOTEM_RUN_STALE_SECONDS = config.env_int("RECOTEM_RUN_STALE_SECONDS", 60)
RECOTEM_REAPER_SECONDS = config.env_int("RECOTEM_REAPER_SECONDS", 30)
RECOTEM_PENDING_RESEND_SECONDS = config.env_int("RECOTEM_PENDING_RESEND_SECONDS", 600)
RECOTEM_ALLOWED_SOURCE_HOSTS = [
    h.strip() for h in os.environ.get("RECOTEM_ALLOWED_SOURCE_HOSTS", "").split(",") if h.strip()
]

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

# --- API ------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
        "recotem.accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["recotem.accounts.permissions.IsOwnerOrScopedKey"],
    "DEFAULT_PAGINATION_CLASS": "recotem.core.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "recotem.core.exceptions.exception_handler",
    "DEFAULT_THROTTLE_RATES": {"login": os.environ.get("RECOTEM_LOGIN_RATE", "10/min")},
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=config.env_int("RECOTEM_ACCESS_TOKEN_MINUTES", 60)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=7),
    "AUTH_HEADER_TYPES": ("Bearer",),
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
    CELERY_BROKER_TRANSPORT_OPTIONS = {"connect_args": {"timeout": 30}}
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
CELERY_TASK_QUEUES = [Queue("celery"), Queue("tuning"), Queue("retraining")]
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
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
