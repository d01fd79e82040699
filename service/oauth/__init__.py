"""The OAuth endpoints: the token endpoint, its grants, client authentication, service accounts.

::

    endpoint.py            POST /oauth/token: the form, the grant_type, no-store
    client_credentials.py  the client-credentials grant (RFC 6749 section 4.4)
    client_auth.py         client_secret_basic, client_secret_post, private_key_jwt
    assertion.py           pure RFC 7523 checks of a client assertion
    clients.py             the registry: clients, their secrets, create/rotate/disable
    client_sessions.py     the one session behind each credential generation's tokens
    accounts.py            what they share on one started extension
    schemas.py             the token request and response, for the OpenAPI document
    admin_cli.py           ``tokengate clients ...``
    device_authorization.py  POST /oauth/device_authorization (RFC 8628 sections 3.1, 3.2)
    device_code.py         the device-code grant (RFC 8628 sections 3.4, 3.5)
    device_codes.py        pure: user codes and device codes, made, shown, read back
    device_logins.py       the device codes' state in SQL, their confirmation, the session
"""
