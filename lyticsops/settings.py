"""Settings for lyticsops, read from environment variables.

Every value has a development default so that `make run` works on a fresh machine.
Production (DEBUG off) refuses to start without real secrets: see `lyticsops.checks`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url

from lyticsops.envkeys import dev_secret

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", True)

# Secrets: taken from the environment; in development only, generated once into var/.
# The *_FROM_ENV flags let the production system check tell a real secret from a dev one.
SECRET_KEY_FROM_ENV = bool(os.environ.get("SECRET_KEY"))
# Without DEBUG a missing key becomes a throw-away value so that the system check
# lyticsops.E001 (not Django's bare ImproperlyConfigured) tells the operator what to do.
SECRET_KEY = os.environ.get("SECRET_KEY") or (
    dev_secret(VAR_DIR, "secret-key") if DEBUG else "unset-" + secrets.token_urlsafe(32)
)

FIELD_ENCRYPTION_KEYS_FROM_ENV = bool(env_list("FIELD_ENCRYPTION_KEYS"))
FIELD_ENCRYPTION_KEYS = env_list("FIELD_ENCRYPTION_KEYS") or (
    [dev_secret(VAR_DIR, "field-encryption-key", fernet=True)] if DEBUG else []
)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
# Addresses of reverse proxies whose X-Forwarded-For we believe (CIDRs). Empty: trust none.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_celery_beat",
    "oauth2_provider",
    "lyticsops",
    "authorizations",
    "profiles",
    "transfers",
    "sftpd",
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

ROOT_URLCONF = "lyticsops.urls"
WSGI_APPLICATION = "lyticsops.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "60")),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL + a busy timeout let the web process and the workers share the file.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

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
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
if STATIC_ROOT.is_dir():
    # WhiteNoise serves `collectstatic`'s output (admin CSS, API docs assets) under
    # gunicorn. Before collectstatic (development, tests) runserver serves the app files.
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    SECURE_CONTENT_TYPE_NOSNIFF = True

# --- Managed SFTP server -------------------------------------------------------------
MANAGED_SFTP_HOST = os.environ.get("MANAGED_SFTP_HOST", "127.0.0.1")
MANAGED_SFTP_PORT = int(os.environ.get("MANAGED_SFTP_PORT", "2222"))
MANAGED_SFTP_ROOT = Path(os.environ.get("MANAGED_SFTP_ROOT", VAR_DIR / "sftp"))
MANAGED_SFTP_HOST_KEY = Path(os.environ.get("MANAGED_SFTP_HOST_KEY", VAR_DIR / "sftpd_host_key"))

# --- Outbound SFTP ----------------------------------------------------------------------
SFTP_CONNECT_TIMEOUT = float(os.environ.get("SFTP_CONNECT_TIMEOUT", "15"))
# Longest silence tolerated from a connected server (a stalled transfer fails after it).
SFTP_IO_TIMEOUT = float(os.environ.get("SFTP_IO_TIMEOUT", "60"))

# --- Imports (transfers.imports): limits and knobs ------------------------------------------
# A file whose size or mtime changes between two looks this far apart is still being written.
IMPORT_STABILITY_SECONDS = float(os.environ.get("IMPORT_STABILITY_SECONDS", "5"))
# Records per upsert batch (one COPY + one INSERT ... ON CONFLICT on PostgreSQL).
IMPORT_BATCH_SIZE = int(os.environ.get("IMPORT_BATCH_SIZE", "20000"))
# Decompression-bomb guards: total output of a decompressing layer (gzip, zip, PGP), and the
# output/input ratio once the output passed IMPORT_RATIO_CHECK_AFTER_BYTES.
IMPORT_MAX_DECOMPRESSED_BYTES = int(
    os.environ.get("IMPORT_MAX_DECOMPRESSED_BYTES", str(20 * 1024**3))
)
IMPORT_MAX_COMPRESSION_RATIO = float(os.environ.get("IMPORT_MAX_COMPRESSION_RATIO", "250"))
IMPORT_RATIO_CHECK_AFTER_BYTES = int(
    os.environ.get("IMPORT_RATIO_CHECK_AFTER_BYTES", str(100 * 1024**2))
)
# Longest single record (a CSV field, a JSON object or line).
IMPORT_MAX_RECORD_BYTES = int(os.environ.get("IMPORT_MAX_RECORD_BYTES", str(1024**2)))
# How many rejected rows / skipped files a run keeps in detail (all are counted).
IMPORT_MAX_REJECTED_ROWS = int(os.environ.get("IMPORT_MAX_REJECTED_ROWS", "100"))
IMPORT_MAX_LISTED_FILES = int(os.environ.get("IMPORT_MAX_LISTED_FILES", "200"))
# Seconds between progress writes to the run while it goes.
IMPORT_PROGRESS_INTERVAL = float(os.environ.get("IMPORT_PROGRESS_INTERVAL", "1"))
# Where zip files are spooled before reading (zip needs seeking); None: the system temp dir.
IMPORT_SPOOL_DIR = os.environ.get("IMPORT_SPOOL_DIR") or None

# --- Celery -------------------------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "filesystem://localhost/"
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "celery-broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),  # default: ./control in the cwd
        "store_processed": False,
    }
    for _folder in ("queue", "processed", "control"):
        (_broker_dir / _folder).mkdir(parents=True, exist_ok=True)
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Beat saves when each task last ran after every task it sends (one small UPDATE), not
# every 3 minutes: a beat restarted in between would send a daily job a second time.
CELERY_BEAT_SYNC_EVERY = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)

# --- Logging: secrets are never passed to a logger; see authorizations.fields. ----------
# lyticsops.logging adds log_context() fields (run_id, job_id, ...) to every record and
# masks secret-looking values as defence in depth. LOG_FORMAT=json: one JSON object a line.
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain").strip().lower() or "plain"
if LOG_FORMAT not in {"plain", "json"}:
    raise ValueError(f"LOG_FORMAT must be 'plain' or 'json', not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "lyticsops.logging.ContextFilter"},
        "redact": {"()": "lyticsops.logging.RedactingFilter"},
    },
    "formatters": {
        "plain": {
            "()": "lyticsops.logging.PlainFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "json": {"()": "lyticsops.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context", "redact"],  # on the handler: loggers' filters miss children
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Configuring "django" drops the console handler of Django's default config, so its
        # records reach ours once (formatted, redacted) instead of twice.
        "django": {"level": LOG_LEVEL},
        "paramiko": {"level": "WARNING"},
        "gnupg": {"level": "WARNING"},
    },
}
# Celery would otherwise replace the root handlers with its own plain ones in the worker.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- OAuth 2.0 (django-oauth-toolkit) ----------------------------------------------------
OAUTH2_PROVIDER_APPLICATION_MODEL = "authorizations.ApiClient"

# === Partner API (app `api`): OAuth 2.0 tokens, REST framework, OpenAPI, cache ===========
# Owned by the partner-access feature (issue 3). Keep additions for it inside this block.
INSTALLED_APPS += ["api", "drf_spectacular_sidecar"]

# The scopes a client may be given. A token request that names none gets the client's own
# allowed scopes, never "all scopes" (DEFAULT_SCOPES is empty and see api.oauth).
API_SCOPES = {
    "authorizations:read": "Read the partner's SFTP/PGP authorizations (never their secrets).",
    "authorizations:write": "Create, change and delete the partner's authorizations.",
    "jobs:read": "Read the partner's import/export jobs and their runs.",
    "jobs:write": "Create and change the partner's import/export jobs.",
    "jobs:run": "Start runs of the partner's jobs.",
    "sftp:read": "Read the partner's managed SFTP accounts.",
}

# Partners may not point authorizations at loopback/private/link-local addresses through
# the API (staff can, in the admin). Development against local servers: set it to 1.
API_ALLOW_INTERNAL_HOSTS = env_bool("API_ALLOW_INTERNAL_HOSTS", False)

# Client secrets: a fast keyed hash (see api/hashers.py for why not PBKDF2). Registered
# after Django's defaults so that people's passwords keep using PBKDF2.
from django.conf import global_settings  # noqa: E402

PASSWORD_HASHERS = [*global_settings.PASSWORD_HASHERS, "api.hashers.ClientSecretHasher"]
# Key of that hash; derived from SECRET_KEY when unset. Old keys go in the fallbacks.
CLIENT_SECRET_PEPPER = os.environ.get("CLIENT_SECRET_PEPPER", "")
CLIENT_SECRET_PEPPER_FALLBACKS = env_list("CLIENT_SECRET_PEPPER_FALLBACKS")

OAUTH2_PROVIDER = {
    "ACCESS_TOKEN_EXPIRE_SECONDS": 3600,
    "SCOPES": API_SCOPES,
    "DEFAULT_SCOPES": [],
    "SCOPES_BACKEND_CLASS": "api.oauth.ClientScopes",
    "OAUTH2_VALIDATOR_CLASS": "api.oauth.PartnerOAuth2Validator",
    "CLIENT_SECRET_HASHER": "client_secret_hmac",
    "CLIENT_SECRET_GENERATOR_LENGTH": 64,
    # RFC 9700: store only a checksum of each token; refuse tokens in query strings. The
    # rest concern flows this server does not offer; compliant, so `check --deploy` is quiet.
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    "ALLOWED_REDIRECT_URI_SCHEMES": ["https"],
}

# Repeated invalid_client answers from one address or for one client id are refused with
# 429 for the rest of a fixed window (api/throttle.py).
API_TOKEN_THROTTLE = {
    "window_seconds": int(os.environ.get("API_TOKEN_THROTTLE_WINDOW", "300")),
    "per_ip": int(os.environ.get("API_TOKEN_THROTTLE_PER_IP", "20")),
    "per_client": int(os.environ.get("API_TOKEN_THROTTLE_PER_CLIENT", "10")),
}

# Shared cache (throttle counters). Nothing may assume one process, so the default is a
# table in the database every web process shares (created by migrations, see
# api/migrations/0001); Redis when REDIS_URL / CACHE_URL is set.
_cache_url = os.environ.get("CACHE_URL") or os.environ.get("REDIS_URL") or ""
if _cache_url.startswith(("redis://", "rediss://", "unix://")):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": _cache_url,
            "KEY_PREFIX": "lyticsops",
        }
    }
elif _cache_url.startswith("locmem://"):  # one process only: development experiments
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "lyticsops_cache",
        }
    }

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["api.authentication.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["api.permissions.ScopePermission"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "api.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "api.exceptions.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "lyticsops partner API",
    "DESCRIPTION": (
        "Trade your client id and secret for a one-hour Bearer token at "
        "`POST /api/v1/idp/oauth2/token` (OAuth 2.0 client credentials), then call the API "
        "with `Authorization: Bearer <token>`. You only ever see your own objects."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    # Self-hosted Swagger UI / Redoc assets (drf-spectacular-sidecar): no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {"AuthorizationMethodEnum": "authorizations.models.Method"},
    "PREPROCESSING_HOOKS": ["api.schema.canonical_paths"],
}
# === end of Partner API block ==========================================================

# === Jobs: runs, locks, retries and schedules (transfers.service/tasks/locks) ============
# The pipeline entry points, imported when a run starts (tests point these at fakes).
TRANSFERS_RUNNERS = {
    "import": "transfers.imports.run_import",
    "export": "transfers.exports.run_export",
}
# Lease of a job's lock (seconds), renewed every third of it while a run goes; a dead
# worker's lock is free again after at most this long.
TRANSFERS_LOCK_TTL = int(os.environ.get("TRANSFERS_LOCK_TTL", "60"))
# Retryable errors (timeouts, connection resets...): attempts after the first, with
# exponential backoff (factor, cap; seconds) and jitter.
TRANSFERS_MAX_RETRIES = int(os.environ.get("TRANSFERS_MAX_RETRIES", "5"))
TRANSFERS_RETRY_BACKOFF = int(os.environ.get("TRANSFERS_RETRY_BACKOFF", "30"))
TRANSFERS_RETRY_BACKOFF_MAX = int(os.environ.get("TRANSFERS_RETRY_BACKOFF_MAX", "600"))
# A run waiting for another run of the same job polls this often, for at most so long.
TRANSFERS_LOCK_RETRY_DELAY = int(os.environ.get("TRANSFERS_LOCK_RETRY_DELAY", "30"))
TRANSFERS_LOCK_WAIT_MAX = int(os.environ.get("TRANSFERS_LOCK_WAIT_MAX", str(2 * 3600)))
# A run still queued after this long was never picked up (its message was lost).
TRANSFERS_QUEUED_STALE_AFTER = int(os.environ.get("TRANSFERS_QUEUED_STALE_AFTER", str(3 * 3600)))
# DatabaseScheduler copies this into its tables at start.
CELERY_BEAT_SCHEDULE = {
    "transfers: restart or fail stale runs": {
        "task": "transfers.tasks.mark_stale_runs",
        "schedule": float(os.environ.get("TRANSFERS_STALE_CHECK_SECONDS", "300")),
    },
}
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # With acks_late, Redis hands the message of a worker that died to another worker once
    # this many seconds have passed. It must exceed the longest retry countdown
    # (TRANSFERS_RETRY_BACKOFF_MAX), or delayed retries would be delivered twice.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", "3600")),
        "unacked_restore_interval": int(os.environ.get("CELERY_UNACKED_RESTORE_INTERVAL", "10")),
    }
# === end of jobs block ===================================================================
