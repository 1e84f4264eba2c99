"""Transport security: TLS contexts, peer authentication, certificates.

``tls``          ``[tls]`` files -> ``ssl.SSLContext``s; the client identity a
                 TLS connection proves (``TransportInfo``); key-file checks.
``peerauth``     the cluster secret and the HMAC challenge-response of the
                 peer handshake; ``PeerSecurity``, what the peer transport
                 authenticates with.
``credentials``  everything above loaded from a ``ServerConfig`` as one
                 value, so that SIGHUP can swap it whole.
``certs``        a small CA for ``coord certs`` and ``coord dev --secure``.
``tlsstream``    TLS on a server socket: OpenSSL fed straight from the socket,
                 Trio only waits (``trio.SSLStream`` cost writes ~15% more);
                 the stream is the SDK's (``coordclient.tlssocket``).
``ratelog``      rate-limited logging of refusals (a flood of bad handshakes
                 must not become a flood of log lines).

Nothing here knows about Raft, sessions or ACLs.
"""
