"""
Access decisions, pure (no Twisted, no reactor):

  - C{session}: the C{Session} value and the JSON document the cookie carries;
  - C{cookie}: the AES-GCM session cookie codec and sealed short-lived blobs;
  - C{keyring}: the cookie keys, and C{keyring_file}: their file (read and
    written atomically, mode 0600);
  - C{policy}: the conditional-access model (named locations, assignments,
    policies); C{evaluation}: the decision and its reasons; C{what_if}: the
    report of C{appproxy policy what-if};
  - C{risk}: risk signals; C{redirects}: safe redirect targets.

May import appproxy.http and appproxy.state.files, and third-party crypto.
"""
