"""RapidValue settings, read from environment variables with safe development defaults.

Production sets ``RAPIDVALUE_DEBUG=0`` and must then provide ``SECRET_KEY``; everything else has
a default that works on a developer machine where ``scripts/run`` started local services.
"""

import base64
import hashlib
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    """Read a boolean flag the way operators write them (1/0, true/false, yes/no)."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    """Read a comma-separated list, ignoring blanks."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("RAPIDVALUE_DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when RAPIDVALUE_DEBUG is off")
    SECRET_KEY = "dev-only-insecure-secret-key-change-me"

# Tenant domains are "<slug>.<base domain>"; the base domain itself serves the control plane.
BASE_DOMAIN = os.environ.get("RAPIDVALUE_BASE_DOMAIN", "localhost").lower()
ALLOWED_HOSTS = env_list("RAPIDVALUE_ALLOWED_HOSTS") or [
    BASE_DOMAIN,
    f".{BASE_DOMAIN}",
    "127.0.0.1",
    "testserver",
]

# Token signing key is separate from SECRET_KEY so that it can be rotated on its own.
JWT_SIGNING_KEY = os.environ.get("RAPIDVALUE_JWT_SIGNING_KEY") or hashlib.sha256(
    f"jwt:{SECRET_KEY}".encode()
).hexdigest()

# Fernet keys for credentials stored at rest (connector auth_config). The first key encrypts,
# all keys decrypt, so a new key is rotated in by putting it first.
FERNET_KEYS = env_list("RAPIDVALUE_FERNET_KEYS") or [
    base64.urlsafe_b64encode(hashlib.sha256(f"fernet:{SECRET_KEY}".encode()).digest()).decode()
]

# How long a webhook delivery stays claimed by a worker before another may take it over.
WEBHOOK_LEASE_SECONDS = int(os.environ.get("RAPIDVALUE_WEBHOOK_LEASE_SECONDS", "60"))

# Agent spine: enrollment codes, presence and the job queue (seconds unless said otherwise).
AGENT_ENROLLMENT_CODE_TTL_MINUTES = int(os.environ.get("RAPIDVALUE_AGENT_ENROLLMENT_CODE_TTL_MINUTES", "1440"))
AGENT_HEARTBEAT_SECONDS = int(os.environ.get("RAPIDVALUE_AGENT_HEARTBEAT_SECONDS", "30"))
AGENT_OFFLINE_AFTER_SECONDS = int(os.environ.get("RAPIDVALUE_AGENT_OFFLINE_AFTER_SECONDS", "90"))
AGENT_LEASE_SECONDS = int(os.environ.get("RAPIDVALUE_AGENT_LEASE_SECONDS", "60"))
AGENT_LONG_POLL_SECONDS = int(os.environ.get("RAPIDVALUE_AGENT_LONG_POLL_SECONDS", "25"))
AGENT_JOB_TIMEOUT_SECONDS = int(os.environ.get("RAPIDVALUE_AGENT_JOB_TIMEOUT_SECONDS", "3600"))
AGENT_TEST_CONNECTION_TIMEOUT_SECONDS = int(os.environ.get("RAPIDVALUE_AGENT_TEST_CONNECTION_TIMEOUT_SECONDS", "30"))
AGENT_CHUNK_MAX_RECORDS = int(os.environ.get("RAPIDVALUE_AGENT_CHUNK_MAX_RECORDS", "5000"))
# A job whose lease expired this many times fails (an agent that dies on it must not hold it forever).
AGENT_MAX_ATTEMPTS = int(os.environ.get("RAPIDVALUE_AGENT_MAX_ATTEMPTS", "5"))
# Sync runs of agent-mode connectors go to a queue of their own: a page waits for the agent, and
# those waits must never hold the workers that run hosted syncs, webhooks and campaigns.
SYNC_AGENT_QUEUE = os.environ.get("RAPIDVALUE_SYNC_AGENT_QUEUE", "agent-syncs")
# A run whose agent is offline when it starts does not hold a worker: it is looked at again after
# this many seconds (still queued, its status_detail says why), and fails after SYNC_AGENT_MAX_WAIT.
SYNC_AGENT_RECHECK_SECONDS = int(os.environ.get("RAPIDVALUE_SYNC_AGENT_RECHECK_SECONDS", "30"))
SYNC_AGENT_MAX_WAIT_SECONDS = int(os.environ.get("RAPIDVALUE_SYNC_AGENT_MAX_WAIT_SECONDS", str(24 * 3600)))
# A hosted full sync into empty tables of at least this many records (the source's estimate) is a
# "first load": one transaction, the tables' index and foreign-key upkeep set aside and rebuilt.
SYNC_FIRST_LOAD_MIN_RECORDS = int(os.environ.get("RAPIDVALUE_SYNC_FIRST_LOAD_MIN_RECORDS", "50000"))
# A page queued for an agent that went offline mid-run: the run fails after this (nothing deleted)
# instead of holding its worker for the whole AGENT_JOB_TIMEOUT_SECONDS.
SYNC_AGENT_OFFLINE_GRACE_SECONDS = int(os.environ.get("RAPIDVALUE_SYNC_AGENT_OFFLINE_GRACE_SECONDS", "600"))

# Outbound HTTP to loopback/private ranges is refused unless this is set (dev and on-prem tests).
ALLOW_PRIVATE_TARGETS = env_bool("RAPIDVALUE_ALLOW_PRIVATE_TARGETS", False)

# rapidvalue.tenancy comes before django_tenants so that our tenant commands (delete_tenant,
# ...) take precedence over django-tenants' own commands of the same name.
SHARED_APPS = [
    "rapidvalue.tenancy",
    "django_tenants",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rapidvalue.users",
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
]

# Apps whose tables exist in every tenant schema. The user table exists in both: in the public
# schema it holds control-plane staff, in a tenant schema that tenant's users.
TENANT_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rapidvalue.users",
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    "rest_framework_simplejwt.token_blacklist",
    "rapidvalue.authn",
    "rapidvalue.api",
    "rapidvalue.audit",
    "rapidvalue.webhooks",
    "identities",
    "access",
    "connectors",
    "agentspine",
]

INSTALLED_APPS = list(SHARED_APPS) + [app for app in TENANT_APPS if app not in SHARED_APPS]

TENANT_MODEL = "tenancy.Tenant"
TENANT_DOMAIN_MODEL = "tenancy.Domain"
PUBLIC_SCHEMA_NAME = "public"
PUBLIC_SCHEMA_URLCONF = "rapidvalue.urls_public"
ROOT_URLCONF = "rapidvalue.urls"
TENANT_LIMIT_SET_CALLS = True

MIDDLEWARE = [
    "rapidvalue.api.middleware.RequestContextMiddleware",
    "rapidvalue.tenancy.middleware.TenantResolutionMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

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

WSGI_APPLICATION = "rapidvalue.wsgi.application"

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://rapidvalue:rapidvalue@127.0.0.1:5432/rapidvalue")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
DATABASES["default"]["ENGINE"] = "django_tenants.postgresql_backend"
# An OLTP API: JIT compilation costs far more than it saves on our short queries (seen: 2.5 s
# of JIT on a 16 ms query whose row estimates were high).
DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c jit=off"
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

AUTH_USER_MODEL = "users.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
CSRF_FAILURE_VIEW = "rapidvalue.api.errors.csrf_failure"
APPEND_SLASH = False  # API paths have no trailing slash; POSTs must not be redirected
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rapidvalue.authn.authentication.TenantTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rapidvalue.api.permissions.TenantRolePermission"],
    "DEFAULT_THROTTLE_CLASSES": ["rapidvalue.api.ratelimit.TokenBucketThrottle"],
    "DEFAULT_PAGINATION_CLASS": "rapidvalue.api.pagination.EnvelopePagination",
    "DEFAULT_FILTER_BACKENDS": ["rapidvalue.api.filters.PlatformFilterBackend"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "rapidvalue.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "PAGE_SIZE": 50,
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=15),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=7),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": False,
    "ALGORITHM": "HS256",
    "SIGNING_KEY": JWT_SIGNING_KEY,
    "ISSUER": "rapidvalue",
    "AUTH_HEADER_TYPES": ("Bearer",),
    "USER_ID_FIELD": "id",
    "USER_ID_CLAIM": "user_id",
}

# Rate limits: a token bucket per token in Redis; overrides live on the token and the tenant.
RATE_LIMIT_PER_SECOND = int(os.environ.get("RAPIDVALUE_RATE_LIMIT_PER_SECOND", "100"))
RATE_LIMIT_BURST = int(os.environ.get("RAPIDVALUE_RATE_LIMIT_BURST", "200"))
# Failed logins allowed per account and per IP within the window before 429.
LOGIN_FAILURES_PER_ACCOUNT = int(os.environ.get("RAPIDVALUE_LOGIN_FAILURES_PER_ACCOUNT", "5"))
LOGIN_FAILURES_PER_IP = int(os.environ.get("RAPIDVALUE_LOGIN_FAILURES_PER_IP", "30"))
LOGIN_FAILURE_WINDOW_SECONDS = int(os.environ.get("RAPIDVALUE_LOGIN_FAILURE_WINDOW_SECONDS", "900"))
IDEMPOTENCY_TTL = timedelta(hours=24)

SPECTACULAR_SETTINGS = {
    "TITLE": "RapidValue API",
    "DESCRIPTION": (
        "Identity governance and administration. Every request is scoped to the tenant of its bearer "
        "token; lists are paginated as {items, total, limit, offset}; writes accept Idempotency-Key; "
        "errors share one shape: {error: {code, message, details, request_id}}."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "ENUM_NAME_OVERRIDES": {
        "IdentityStatusEnum": "identities.models.Identity.Status",
        "AccountStatusEnum": "access.models.Account.Status",
        "GrantStateEnum": "access.models.Grant.State",
        "TenantStatusEnum": "rapidvalue.tenancy.models.Tenant.Status",
        "SyncRunStatusEnum": "connectors.models.SyncRun.Status",
        "WebhookDeliveryStatusEnum": "rapidvalue.webhooks.models.WebhookDelivery.Status",
        "AgentStateEnum": "agentspine.models.Agent.State",
        "AgentJobKindEnum": "agentspine.models.AgentJob.Kind",
        "AgentJobStatusEnum": "agentspine.models.AgentJob.Status",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "rapidvalue.api.schema.add_platform_conventions",
    ],
}

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
CELERY_BEAT_SCHEDULE = {
    "mark-silent-agents-offline": {
        "task": "agentspine.tasks.mark_silent_agents_offline_all_tenants",
        "schedule": timedelta(seconds=15),
    },
    "start-scheduled-connector-syncs": {
        "task": "connectors.tasks.start_scheduled_syncs_all_tenants",
        "schedule": timedelta(minutes=1),
    },
    "sweep-webhook-deliveries": {
        "task": "rapidvalue.webhooks.tasks.sweep_webhooks_all_tenants",
        "schedule": timedelta(seconds=30),
    },
    "purge-expired-idempotency-records": {
        "task": "rapidvalue.api.tasks.purge_idempotency_records_all_tenants",
        "schedule": timedelta(hours=1),
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("RAPIDVALUE_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},
    },
}
