"""A peer: djangorestframework-simplejwt with its ``token_blacklist`` app.

Set up as simplejwt's documentation shows it (``JWTAuthentication`` as DRF's
authentication class, ``rest_framework_simplejwt.token_blacklist`` installed,
the token views), in Django's production settings (``DEBUG = False``,
persistent database connections, JSON renderer only), served by gunicorn from
``bench/peers/simplejwt/.venv``; never imported by tokengate.

Revocation: the blacklist holds *refresh* tokens and is read when one is
refreshed; an access token is not looked up in it, so a revoked session's
access token works until it expires. Every protected request verifies the JWT
(HS256) and reads the user's row (``JWTAuthentication.get_user``: one SQL
query on SQLite).
"""

import os
from datetime import timedelta

SECRET_KEY = os.environ["PEER_SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
]
# An API: no sessions, messages or CSRF (the token is in a header).
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "benchsite.urls"
WSGI_APPLICATION = "benchsite.wsgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["PEER_DB"],
        "CONN_MAX_AGE": None,  # one connection per worker thread, kept
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": (
        "rest_framework_simplejwt.authentication.JWTAuthentication",
    ),
    "DEFAULT_PERMISSION_CLASSES": ("rest_framework.permissions.IsAuthenticated",),
    "DEFAULT_RENDERER_CLASSES": ("rest_framework.renderers.JSONRenderer",),
}
SIMPLE_JWT = {
    # simplejwt's default is 5 minutes: longer than one bench run is needed here
    # (tokengate's and the other peers' access tokens live an hour in the bench too).
    "ACCESS_TOKEN_LIFETIME": timedelta(hours=1),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
}
