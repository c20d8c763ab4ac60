"""Run an unmodified AWS client against moto inside a private network namespace.

Some clients (aws-sdk-js v2, hence Serverless Framework v3) cannot be pointed at a custom
endpoint from the environment. Inside a private mount+net+pid namespace we can make the
real AWS host names *be* moto instead:

- loopback is the only interface, so nothing can reach the internet or real AWS;
- a tiny DNS responder answers every A query with 127.0.0.1 (``resolv.conf`` is
  bind-mounted, which only this mount namespace sees);
- a TLS terminator on 127.0.0.1:443, with a throwaway CA the client trusts through
  ``NODE_EXTRA_CA_CERTS``, forwards the decrypted bytes to a plain-http moto server,
  Host header untouched (moto dispatches on it);
- the rolebroker daemon runs there too, so the client's only credentials come from it.

The outer side (:func:`run_serverless_in_namespace`) starts ``unshare`` with a hard
timeout; the inner side (``python -m tests.support.netns serverless ...``) does the work
and writes a JSON report of facts (never a secret) for the test to assert on. The inner
runner is PID 1 of its own pid namespace, so when it exits the kernel kills everything it
started, whatever state it was in.

One module per part: :mod:`.constants` (names, accounts, ports), :mod:`.dns`,
:mod:`.tls`, :mod:`.namespace` (loopback, resolv.conf), :mod:`.processes`,
:mod:`.motochecks` (looking into moto), :mod:`.run` (the inner side) and :mod:`.outer`
(unshare, timeout, leftovers); ``__main__`` is the command line.
"""

from tests.support.netns.constants import (
    BASE_ACCOUNT,
    FUNCTION,
    ROLE_ACCOUNT,
    ROLE_ARN,
    STACK,
)
from tests.support.netns.dns import DnsResponder, dns_answer, dns_name
from tests.support.netns.outer import (
    NamespaceRun,
    leftover_processes,
    namespace_problem,
    run_serverless_in_namespace,
    serverless_problem,
)
from tests.support.netns.run import Secrets
from tests.support.netns.tls import TlsFiles, TlsTerminator, make_tls_files

__all__ = [
    "BASE_ACCOUNT",
    "FUNCTION",
    "ROLE_ACCOUNT",
    "ROLE_ARN",
    "STACK",
    "DnsResponder",
    "NamespaceRun",
    "Secrets",
    "TlsFiles",
    "TlsTerminator",
    "dns_answer",
    "dns_name",
    "leftover_processes",
    "make_tls_files",
    "namespace_problem",
    "run_serverless_in_namespace",
    "serverless_problem",
]
