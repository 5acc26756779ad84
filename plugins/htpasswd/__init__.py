"""Auth backend: a static credentials file, htpasswd-style with bcrypt hashes (docs/security.md)."""
