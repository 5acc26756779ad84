"""Auth backend: a verified client certificate's Common Name is the user (etcd's client-cert-auth)."""
