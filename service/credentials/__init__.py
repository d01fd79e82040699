"""Credentials other than a person's session: which kind a request carries, and API keys.

``kinds`` reads the credential once for the guard; ``apikeys`` is the pure
key format; ``manager`` keeps keys (SQL the truth, Redis the hot copy);
``secret`` holds the digest secret. Service accounts (``oauth/``) mint
ordinary access JWTs carrying ``client_id``, checked as sessions are.
"""
