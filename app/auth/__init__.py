"""Who is calling: single sign-on with an OpenID Connect provider (bearer JWTs verified
against the issuer's keys, the console's authorization-code flow)."""
