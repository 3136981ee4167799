"""The authors' released data (``lookups import-paper``, docs/method.md §7): ``files`` (reading an
untrusted folder safely), ``format`` (the fields of their files), ``pickled`` (their ablation
pickle, through an allow-list unpickler), ``chains`` (which files form an experiment),
``loader`` (one experiment's files read, role by role), ``importer`` (one experiment written as a
run), ``command`` (the command and its table)."""
